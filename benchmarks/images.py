"""Benchmark of the two container images: each one's size, and how long it takes to rebuild after a one-line code
change (only the project's layers rebuild: the lock's layer comes from the cache). Prints a table; asserts nothing.

    make images && python benchmarks/images.py

The change is made in a copy of the build context (requirements.lock, setup.py, docker/, pipeline/, components/),
so the checkout is untouched; the rebuilt image gets a tag of its own, removed afterwards. Each image is rebuilt on the
base it was built on (its org.emotionet-au.base-image label). Targets (issue #15): CPU image under 3 GB, a rebuild
after a code change under 60 s on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONTEXT = ("requirements.lock", "setup.py", ".dockerignore", "docker", "pipeline", "components")
SIZE_TARGET_GB = {"cpu": 3.0}
REBUILD_TARGET_S = 60.0


def rebuild_after_a_code_change(kind: str, tag: str, base: str, log_dir: str) -> float:
    """Seconds to rebuild `kind` on `base` from a copy of the context with one line added to a step's module."""
    from pipeline import containers

    with tempfile.TemporaryDirectory() as tmp:
        for name in CONTEXT:
            src = os.path.join(ROOT, name)
            (shutil.copytree(src, os.path.join(tmp, name), ignore=shutil.ignore_patterns("__pycache__"))
             if os.path.isdir(src) else shutil.copy2(src, tmp))
        with open(os.path.join(tmp, "components", "download", "logic.py"), "a") as f:
            f.write(f"# benchmarks/images.py: a one-line change at {time.time()}\n")
        bench_tag = tag.rsplit(":", 1)[0] + ":rebuild-benchmark"
        try:
            log = os.path.join(log_dir, f"rebuild-{kind}.log")
            return containers.build_image(kind, bench_tag, base, os.environ, log,
                                          root=Path(tmp), say=lambda line: None)
        finally:
            containers.remove_image(bench_tag)


def main(argv=None) -> int:
    from pipeline import containers, defaults

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag-cpu", default=defaults.LOCAL_IMAGE_CPU)
    p.add_argument("--tag-gpu", default=defaults.LOCAL_IMAGE_GPU)
    p.add_argument("--log-dir", default=os.path.join(ROOT, "benchmarks", ".cache", "images"))
    p.add_argument("--no-rebuild", action="store_true", help="Sizes only.")
    args = p.parse_args(argv)
    try:
        containers.check_docker()
    except containers.ContainerError as e:
        print(f"benchmarks/images.py: {e}", file=sys.stderr)
        return 2
    rows = []
    for kind, tag in (("cpu", args.tag_cpu), ("gpu", args.tag_gpu)):
        labels = containers.image_labels(tag)
        if labels is None:
            print(f"benchmarks/images.py: no image {tag}: build it with `make images`", file=sys.stderr)
            return 2
        base = labels.get(containers.LABEL_BASE, "?")
        size = containers.image_size(tag) / 1e9
        rebuild = None if args.no_rebuild else rebuild_after_a_code_change(kind, tag, base, args.log_dir)
        rows.append((kind, tag, base, size, rebuild))
    print(f"{'image':<5} {'tag':<34} {'base':<42} {'size':>8} {'target':>8} {'rebuild':>8} {'target':>7}")
    for kind, tag, base, size, rebuild in rows:
        target = f"< {SIZE_TARGET_GB[kind]:.0f} GB" if kind in SIZE_TARGET_GB else "-"
        print(f"{kind:<5} {tag:<34} {base:<42} {size:6.2f} GB {target:>8} "
              + (f"{rebuild:7.1f}s {'< 60 s':>7}" if rebuild is not None else f"{'-':>8} {'-':>7}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
