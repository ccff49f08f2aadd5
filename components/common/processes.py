"""Child processes started with subprocess (a model server, above all), stopped as a cluster stops a container."""
from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """SIGTERM (uvicorn finishes what is in flight, then exits), SIGKILL if it is still running after timeout_s;
    its exit status. A process that has already ended is left as it is."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
