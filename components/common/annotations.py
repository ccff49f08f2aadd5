"""The annotations folder (annotate's output): its shards, their columns, annotate_summary.json; the writer and reader.

One row per image and face, as OpenFace writes one per frame and face: the image (key, url), what became of it
(status, reason, message), the face (index, box in the image's pixels, detector score), each AU's probability
(`AU1` ...) and active flag (`AU1_active` ...) at the model's threshold, and the model version. An image with no face
to score is one row with status no_face and its reason; an image that could not be scored is one row with status
bad and its reason. The AU columns are those of the model (model_config.json's au_ids), in its order.
"""
from __future__ import annotations

import json
import re

from components.common import faces, inference, storage

SHARD_PREFIX = "annotations"  # annotations-<i:05d>-of-<n:05d>.parquet
SHARD_SUFFIX = ".parquet"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"  # Beam's shard_name_template for the same names
SUMMARY_FILE = "annotate_summary.json"  # written last: a folder without it is a run that did not finish
_SHARD = re.compile(r"^annotations-(\d{5})-of-(\d{5})\.parquet$")

# What became of an image (the `status` of its rows).
SCORED = "scored"  # a face was scored: the box, score and AU columns are filled
NO_FACE = "no_face"  # a readable image with no face to score; reason: faces.NO_FACE or faces.TINY_FACE
BAD = "bad"  # the image could not be scored; reason: one of BAD_REASONS, message: what to do
STATUSES = (SCORED, NO_FACE, BAD)
MISSING = "missing"  # the ledger (or the listing) names the image, but its file is not there
BAD_REASONS = inference.ERROR_REASONS + (MISSING,)
NO_FACE_REASONS = (faces.NO_FACE, faces.TINY_FACE)

KEY, URL = "key", "url"  # the manifest's key; the image's URL, or its path or gs:// URI for a folder's listing
STATUS, REASON, MESSAGE = "status", "reason", "message"
IMAGE_WIDTH, IMAGE_HEIGHT = "image_width", "image_height"  # the picture, upright (0 when it could not be read)
FACES_FOUND = "faces_found"  # faces the detector found in the image, usable or not
FACE = "face"  # the face's index in its image, 0 the largest; null on a row without a face
FACE_STATUS = "face_status"  # faces.CROPPED, WHOLE or NO_FACE_WHOLE: what the model saw
BOX = ("x", "y", "w", "h")  # the face's box in the image's pixels (the whole image for a whole-image model)
SCORE = "score"  # the detector's confidence; null for a whole image
MODEL_VERSION = "model_version"  # the registry version scored with ("" for a model folder outside a registry)
HEAD = (KEY, URL, STATUS, REASON, MESSAGE, IMAGE_WIDTH, IMAGE_HEIGHT, FACES_FOUND, FACE, FACE_STATUS, *BOX, SCORE)


def au_column(au: int) -> str:
    """An AU's probability column: AU1, AU12 (inference.au_key: the names of the scorer's results)."""
    return inference.au_key(au)


def active_column(au: int) -> str:
    """An AU's active flag: AU1_active (probability at or over the model's threshold for it)."""
    return f"{au_column(au)}_active"


def columns(au_ids) -> list[str]:
    """Every column of a shard, in order, for a model of these AUs."""
    return [*HEAD, *(au_column(a) for a in au_ids), *(active_column(a) for a in au_ids), MODEL_VERSION]


def schema(au_ids):
    """The shards' Arrow schema."""
    import pyarrow as pa

    types = {KEY: pa.string(), URL: pa.string(), STATUS: pa.string(), REASON: pa.string(), MESSAGE: pa.string(),
             IMAGE_WIDTH: pa.int32(), IMAGE_HEIGHT: pa.int32(), FACES_FOUND: pa.int32(), FACE: pa.int32(),
             FACE_STATUS: pa.string(), SCORE: pa.float32(), MODEL_VERSION: pa.string(),
             **{b: pa.float32() for b in BOX}}
    fields = [pa.field(c, types[c]) for c in HEAD]
    fields += [pa.field(au_column(a), pa.float32()) for a in au_ids]
    fields += [pa.field(active_column(a), pa.bool_()) for a in au_ids]
    fields.append(pa.field(MODEL_VERSION, pa.string()))
    return pa.schema(fields)


def shard_name(index: int, count: int) -> str:
    return f"{SHARD_PREFIX}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


# --- the writer: rows of a scorer's result ---------------------------------------------------------------------

def _row(key: str, url: str, version: str | None, au_ids, **values) -> dict:
    row = dict.fromkeys(columns(au_ids))
    row.update({KEY: key, URL: url, MODEL_VERSION: version or "", **values})
    return row


def result_rows(result: dict, key: str, url: str, au_ids, version: str | None) -> list[dict]:
    """The rows of one image from a components.common.inference.Scorer result: one per face scored, or one
    saying why there is none (status no_face or bad, with its reason)."""
    image = {IMAGE_WIDTH: int(result.get("width") or 0), IMAGE_HEIGHT: int(result.get("height") or 0),
             FACES_FOUND: int(result.get("faces_found") or 0)}
    if result.get("error"):
        return [_row(key, url, version, au_ids, **image, status=BAD, reason=result.get("reason"),
                     message=result["error"])]
    if not result.get("faces"):
        return [_row(key, url, version, au_ids, **image, status=NO_FACE, reason=result.get("reason") or faces.NO_FACE)]
    rows = []
    for face in result["faces"]:
        probabilities, active = face.get("probabilities") or {}, set(face.get("active") or ())
        values = {**image, STATUS: SCORED, REASON: result.get("reason"), FACE: int(face["face"]),
                  FACE_STATUS: face.get("status"), SCORE: face.get("score"),
                  **{name: float(v) for name, v in zip(BOX, face["box"])}}
        for a in au_ids:
            values[au_column(a)] = probabilities.get(au_column(a))
            values[active_column(a)] = au_column(a) in active
        rows.append(_row(key, url, version, au_ids, **values))
    return rows


def bad_row(key: str, url: str, au_ids, version: str | None, reason: str, message: str) -> dict:
    """The row of an image that could not be read at all (e.g. MISSING)."""
    return _row(key, url, version, au_ids, status=BAD, reason=reason, message=message, image_width=0,
                image_height=0, faces_found=0)


def write_summary(folder: str, summary: dict) -> str:
    path = storage.join(folder, SUMMARY_FILE)
    storage.write_text(path, json.dumps(summary, indent=2))
    return path


# --- the reader ------------------------------------------------------------------------------------------------

def shard_files(folder: str) -> list[str]:
    """The shards of an annotations folder (local or gs://), in order; ValueError naming the folder when one of the
    -of-N is missing or the folder holds none."""
    found = {}
    for path in storage.list_files(folder):
        m = _SHARD.match(path.rstrip("/").rsplit("/", 1)[-1])
        if m:
            found[(int(m.group(2)), int(m.group(1)))] = path
    counts = {n for n, _ in found}
    if not found:
        raise ValueError(f"{folder} holds no {shard_name(0, 1)}: it is not a folder written by annotate")
    if len(counts) > 1:
        raise ValueError(f"{folder} mixes shards of {sorted(counts)} files: runs were mixed; annotate it again")
    count = counts.pop()
    missing = [i for i in range(count) if (count, i) not in found]
    if missing:
        raise ValueError(f"{folder} lacks {shard_name(missing[0], count)}: the run did not finish; annotate it again")
    return [found[(count, i)] for i in range(count)]


def remove_shards(folder: str) -> None:
    """Deletes the shards and the summary of an earlier run, so the folder holds one run's files only."""
    if not storage.exists(folder):
        return
    storage.delete(storage.join(folder, SUMMARY_FILE))
    for path in list(storage.list_files(folder)):
        if _SHARD.match(path.rstrip("/").rsplit("/", 1)[-1]):
            storage.delete(path)


def read_annotations(folder: str, columns_wanted=None):
    """Every shard of an annotations folder (local or gs://) as one Arrow table (`.to_pandas()` for a DataFrame);
    columns_wanted: only those columns."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in shard_files(folder):
            local = storage.local_copy(path, tmp)
            tables.append(pq.read_table(local, columns=list(columns_wanted) if columns_wanted else None))
    return pa.concat_tables(tables)


def read_summary(folder: str) -> dict:
    path = storage.join(folder, SUMMARY_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} does not exist: annotate did not finish writing {folder}")
    return json.loads(storage.read_text(path))
