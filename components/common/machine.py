"""What this machine lends the process: its cores (no heavy import here: the scorer, Beam and the CLIs read it)."""
from __future__ import annotations

import os


def local_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU limit (cgroup v2 cpu.max)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        # A pod limited to 4 CPUs on a 64-core node still sees 64 in its affinity.
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)
