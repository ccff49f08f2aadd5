"""Converts one part of the work (a few thousand images) into one TFRecord file: the unit the convert
pipeline hands to a worker, or locally to a pool process. Imports neither Beam nor TensorFlow, so a
pool process starts in a fraction of a second.
"""
from __future__ import annotations

import logging

from components.common import examples, imaging, partfiles
from components.common import faces as face_contract
from components.common.examples import EXAMPLES_WRITTEN

_LOG = logging.getLogger(__name__)

# Counters of the convert step (Beam Metrics in the runner's UI, and examples_summary.json).
SKIPPED_UNDECODABLE = "skipped_undecodable"
SKIPPED_MISSING_FILE = "skipped_missing_file"
COUNTERS = (EXAMPLES_WRITTEN, imaging.PASSED_THROUGH, imaging.REENCODED, imaging.RESIZED,
            SKIPPED_UNDECODABLE, SKIPPED_MISSING_FILE) + face_contract.COUNTERS
# download names each image images/<key>.<ext>; a missing file is looked for under these too.
IMAGE_EXTENSIONS = ("jpg", "png", "gif", "bmp", "webp", "jpeg")


def read_image(path: str) -> bytes | None:
    """The bytes of images/<key>.<ext>, trying the other extensions when that name is missing; None if none exists."""
    stem, _, ext = path.rpartition(".")
    candidates = ([path] + [f"{stem}.{e}" for e in IMAGE_EXTENSIONS if e != ext]) if stem else [path]
    for candidate in candidates:
        if partfiles.is_local(candidate):
            try:
                with open(candidate, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                continue
        from apache_beam.io.filesystems import FileSystems  # gs:// and the other filesystems of the runner

        try:
            with FileSystems.open(candidate, compression_type="uncompressed") as f:
                return f.read()
        except Exception:  # noqa: BLE001 - each filesystem has its own "not found"; check it below
            if FileSystems.exists(candidate):
                raise  # the file is there but unreadable: an I/O failure the runner should retry
    return None


def convert_part(task: dict) -> dict:
    """Converts the images of task["items"] (sorted by key) and streams their examples to task["path"].

    task: {"split", "shard", "part", "path", "items", "au_ids", "max_side", "faces"}; each item is
    {"key", "path", "au" (int16 bytes), "va"}; "faces" is a FaceSettings dict (absent: whole
    images). Returns the task's split/shard/part/path with "images" (its items) and "stats" (examples,
    per-AU counts, counters). One image is in memory at a time.
    """
    import numpy as np

    from components.common.facefinder.crop import prepare

    au_ids = [int(a) for a in task["au_ids"]]
    max_side = int(task["max_side"])
    settings = face_contract.FaceSettings.from_dict(task.get("faces"))
    counters = dict.fromkeys(COUNTERS, 0)
    written = []  # the labels of each example written
    with partfiles.create_file(task["path"]) as out:
        for item in task["items"]:
            data = read_image(item["path"])
            if data is None:
                _LOG.warning("image %s: %s is missing although the ledger says ok; skipped", item["key"], item["path"])
                counters[SKIPPED_MISSING_FILE] += 1
                continue
            try:
                image = prepare(data, settings, max_side)
            except imaging.UndecodableImage as e:
                _LOG.warning("image %s (%s) cannot be decoded, skipped: %s", item["key"], item["path"], e)
                counters[SKIPPED_UNDECODABLE] += 1
                continue
            if image.reason:
                counters[face_contract.counter_name(image.reason)] += 1
            if image.count > 1:
                counters["faces_multiple"] += 1
            for scale in image.scales:  # how many faces each scale of the face finder found
                counters[face_contract.found_counter(scale)] += 1
            if image.tiles:
                counters[face_contract.TILED] += 1
            if image.jpeg is None:
                counters["faces_skipped"] += 1
                continue
            counters[face_contract.counter_name(image.status)] += 1
            au = np.frombuffer(item["au"], dtype=np.int16)
            if au.size != len(au_ids):
                raise ValueError(f"image {item['key']}: {au.size} AU labels for {len(au_ids)} AU ids")
            record = examples.encode_example(
                image.jpeg, image.height, image.width, item["key"], au_ids, au.tolist(), va=item.get("va"),
                face=image.features(),
            )
            examples.write_record(out, record)
            written.append(au)
            if image.status != face_contract.CROPPED:  # crops are counted as faces_cropped
                counters[image.outcome] += 1
    counters[EXAMPLES_WRITTEN] = len(written)
    split = task["split"]
    counts = examples.label_counts(written, len(au_ids))
    return {
        "split": split, "shard": task["shard"], "part": task["part"], "path": task["path"],
        "images": len(task["items"]),
        "stats": {"splits": {split: {"examples": len(written), "au": counts.tolist()}},
                  "counters": counters, "shards": []},
    }
