"""The downloads folder (contract 2): images/, ledger.parquet (its columns, statuses, error classes), download_summary.json,
and the ledger's readers."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa

from components.common import storage
from components.common.errors import StepRefusal
from components.common.tables import column_array, read_columns

# What download writes (and a store holds).
LEDGER_FILE = "ledger.parquet"
IMAGES_DIR = "images"  # images/<key>.<format>: the bytes as served
DOWNLOAD_SUMMARY_FILE = "download_summary.json"  # count per error class

OK = "ok"  # the status of a row whose image is in images/, and its error class
STATUSES = (OK, "failed")
ERROR_CLASSES = (
    "ok", "http_404", "http_4xx", "http_5xx", "redirect", "dns", "timeout", "connection_reset",
    "connection_refused", "network", "tls", "not_image", "too_large", "invalid_url",
)
# Worth another try now (with backoff) and on the next run; HTTP 408 and 429 are http_4xx but transient too.
TRANSIENT_CLASSES = frozenset({"http_5xx", "timeout", "connection_reset", "connection_refused", "network", "dns"})
TRANSIENT_HTTP_STATUS = frozenset({408, 429})
# The file extensions contract 2 allows; the ledger's `format` column holds one of them.
FORMATS = ("jpg", "png", "gif", "bmp", "webp")
_FORMAT_OF_NAME = {"jpeg": "jpg", "jpg": "jpg", "png": "png", "gif": "gif", "bmp": "bmp", "webp": "webp"}

SCHEMA = pa.schema([
    ("key", pa.string()),
    ("url", pa.string()),
    ("status", pa.string()),  # ok | failed
    ("error_class", pa.string()),
    ("http_status", pa.int32()),  # null when no HTTP response came back
    ("attempts", pa.int32()),  # every attempt of every run, not only the last run's
    ("bytes", pa.int64()),  # the rest are null unless status is ok
    ("sha256", pa.string()),
    ("format", pa.string()),  # the file's extension: images/<key>.<format>
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("first_attempt", pa.string()),  # ISO 8601 UTC, e.g. 2024-05-01T12:00:00.123456Z
    ("last_attempt", pa.string()),
    ("message", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)


class LedgerError(StepRefusal):
    """A ledger or journal that cannot be used; the message says which file and what to do."""


def is_transient(error_class: str, http_status: int | None = None) -> bool:
    """True for the failures that are retried now and on the next run (contract 2)."""
    return error_class in TRANSIENT_CLASSES or (error_class == "http_4xx" and http_status in TRANSIENT_HTTP_STATUS)


def image_name(key: str, fmt: str) -> str:
    """images/<key>.<format>, relative to the output folder."""
    return f"{IMAGES_DIR}/{key}.{fmt}"


def empty_table() -> pa.Table:
    return SCHEMA.empty_table()


def check_columns(names: list[str], uri: str) -> None:
    """LedgerError naming uri when the column names lack one of the ledger's."""
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise LedgerError(f"{uri} lacks the ledger columns {missing}; it was not written by this step")


def read_ledger(uri: str) -> pa.Table:
    """ledger.parquet at uri (local or gs://), or an empty table when there is none. Whole, in memory:
    for a small ledger; the download step itself reads ledgers a batch at a time."""
    import pyarrow.parquet as pq

    if not storage.exists(uri):
        return empty_table()
    try:
        table = pq.read_table(uri if not storage.is_gcs(uri) else io.BytesIO(storage.read_bytes(uri)))
    except Exception as e:  # noqa: BLE001 - a ledger we cannot read must be named, not a traceback
        raise LedgerError(f"{uri} is not a readable ledger ({e}); move it aside to start that folder afresh") from e
    check_columns(table.column_names, uri)
    return table.select(list(COLUMNS)).cast(SCHEMA)


def read_downloaded(downloads_dir: str, unknown_bytes: int):
    """(keys (S20), format index into FORMATS (int8), bytes (int64)) of the ledger's images with status ok, one row a key.

    A row without a byte count gets unknown_bytes; an unknown format reads as jpg (a reader looks for the file
    under every extension). FileNotFoundError when the folder has no ledger, ValueError when it is not contract 2.
    """
    path = storage.join(downloads_dir, LEDGER_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} does not exist: pass the folder written by download (--downloads)")
    try:
        table = read_columns(path, ("key", "status", "format", "bytes"), ("key", "status"), "ledger")
    except ValueError as e:
        raise ValueError(f"{e}: expected contract 2 as written by download; rerun download") from None
    import pyarrow.compute as pc

    table = table.filter(pc.equal(table["status"], OK))
    keys = np.array(table["key"].to_pylist(), dtype=bytes)
    if "format" in table.column_names:
        lookup = {f: FORMATS.index(e) for f, e in _FORMAT_OF_NAME.items()}
        ext = np.array([lookup.get(str(f or "").lower().lstrip("."), 0) for f in table["format"].to_pylist()],
                       np.int8)
    else:
        ext = np.zeros(len(keys), np.int8)  # jpg; a missing file is looked for under every extension
    size = (column_array(table, "bytes", np.int64, fill=unknown_bytes) if "bytes" in table.column_names
            else np.full(len(keys), unknown_bytes, np.int64))
    # One row a key; should a ledger repeat one, its last row is the latest attempt.
    _, last = np.unique(keys[::-1], return_index=True)
    last = np.sort(len(keys) - 1 - last)
    return keys[last], ext[last], size[last]
