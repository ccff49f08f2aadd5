"""Binary files the Beam steps (convert, filter) read and write: local, or on any filesystem of the runner (gs://).

Beam is imported only for a path that is not local, so a process that converts local parts starts
in a fraction of a second.
"""
from __future__ import annotations

import os


def is_local(path: str) -> bool:
    return "://" not in path


def open_file(path: str):
    """A binary file object to read, local or on any filesystem of the runner (gs://)."""
    if is_local(path):
        return open(path, "rb")
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type="uncompressed")


def create_file(path: str):
    """A binary file object to write (parent folders made), local or on any filesystem of the runner."""
    if is_local(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        return open(path, "wb")
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.create(path, compression_type="uncompressed")
