"""Copies a step's output folder to a fixed URI (local or gs://), its record written last as the "done" marker."""
from __future__ import annotations

import json
import os

from components.common import storage
from components.common.errors import StepRefusal
from components.common.registry import PUBLISHED_FILE


class PublishError(StepRefusal, ValueError):
    """The folder to publish is missing or empty: the message names it."""


def run(source_dir: str, destination: str) -> dict:
    """Copies every file under source_dir to destination, then writes destination/published.json; returns it."""
    if not os.path.isdir(source_dir) or not any(files for _, _, files in os.walk(source_dir)):
        raise PublishError(f"{source_dir} has no file to publish: the step before publish wrote nothing")
    copied = storage.copy_tree(source_dir, destination)
    record = {"source": source_dir, "destination": destination, "files": len(copied)}
    storage.write_text(storage.join(destination, PUBLISHED_FILE), json.dumps(record, indent=2))
    return record
