#!/usr/bin/env python3
"""Writes the pins an image installs: requirements.lock less what no step imports, with each image's builds of it.

Run inside `docker build` with the base image's python3 (stdlib only); tests/unit/test_docker.py reads the same lists.
"""
from __future__ import annotations

import argparse
import re
import sys

# Packages of requirements.lock that the images leave out: no step, nor the KFP executor, imports them.
NOT_IN_IMAGES = {
    "pytest": "tests only",
    "pytest-timeout": "tests only",
    "pytest-xdist": "tests only (make test's processes)",
    "execnet": "pytest-xdist's",
    "iniconfig": "pytest's",
    "pluggy": "pytest's",
    "gcp-storage-emulator": "tests only (the Cloud Storage emulator)",
    "jax": "mediapipe's Tasks API; the face finder imports only its face_detection (common/facefinder/detect.py)",
    "jaxlib": "jax's (300 MB)",
    "sounddevice": "mediapipe's audio tasks, never imported",
    "libclang": "TensorFlow's, for its C++ op generator; never imported at run time (62 MB)",
}
# The same release of a package, built for an image: the distribution the image installs at the lock's version.
SUBSTITUTES = {
    # The data steps need no CUDA: tensorflow-cpu is the lock's TensorFlow without it (951 MB installed, not 1.7 GB).
    "cpu": {"tensorflow": "tensorflow-cpu", "opencv-contrib-python": "opencv-contrib-python-headless"},
    # OpenCV (under MediaPipe) without its GUI needs no libGL, GLib nor Mesa (350 MB of system packages).
    "gpu": {"opencv-contrib-python": "opencv-contrib-python-headless"},
}

_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_pins(lock_text: str, image: str) -> list[str]:
    """`name==version` lines that image `image` (cpu or gpu) installs, in the lock's order."""
    if image not in SUBSTITUTES:
        raise ValueError(f"image {image!r}: expected one of {', '.join(SUBSTITUTES)}")
    out = []
    for line in lock_text.splitlines():
        m = _PIN.match(line.strip())
        if not m:
            continue
        name, version = normalise(m.group(1)), m.group(3)
        if name not in NOT_IN_IMAGES:
            out.append(f"{SUBSTITUTES[image].get(name, name)}=={version}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("lock", help="requirements.lock")
    p.add_argument("--image", required=True, choices=sorted(SUBSTITUTES), help="the image whose pins to write")
    args = p.parse_args(argv)
    with open(args.lock) as f:
        print("\n".join(image_pins(f.read(), args.image)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
