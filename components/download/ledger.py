"""The download ledger (contract 2): its columns and error classes, the append-only journal, compaction and the summary."""
from __future__ import annotations

import io
import json
import os
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from components.common import storage

LEDGER_FILE = "ledger.parquet"
SUMMARY_FILE = "download_summary.json"
IMAGES_DIR = "images"
JOURNAL_DIR = "journal"

OK = "ok"
ERROR_CLASSES = (
    "ok", "http_404", "http_4xx", "http_5xx", "redirect", "dns", "timeout", "connection_reset",
    "connection_refused", "network", "tls", "not_image", "too_large", "invalid_url",
)
# Worth another try now (with backoff) and on the next run; HTTP 408 and 429 are http_4xx but transient too.
TRANSIENT_CLASSES = frozenset({"http_5xx", "timeout", "connection_reset", "connection_refused", "network", "dns"})
TRANSIENT_HTTP_STATUS = frozenset({408, 429})
# The file extensions contract 2 allows; the ledger's `format` column holds one of them.
FORMATS = ("jpg", "png", "gif", "bmp", "webp")

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
SUMMARY_COLUMNS = ("key", "status", "error_class", "http_status")
# Compaction holds the ledger in columns; the journal's text is read, and the ledger written, in pieces.
JOURNAL_BLOCK = 32 * 1024 * 1024
WRITE_SLICE = 65536


def is_transient(error_class: str, http_status: int | None = None) -> bool:
    """True for the failures that are retried now and on the next run (contract 2)."""
    return error_class in TRANSIENT_CLASSES or (error_class == "http_4xx" and http_status in TRANSIENT_HTTP_STATUS)


def image_name(key: str, fmt: str) -> str:
    """images/<key>.<format>, relative to the output folder."""
    return f"{IMAGES_DIR}/{key}.{fmt}"


def empty_table() -> pa.Table:
    return SCHEMA.empty_table()


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=SCHEMA)


def read_journal(data: bytes) -> pa.Table:
    """The rows of a journal, as a table; a line cut short by a kill is skipped, not fatal.

    Parsed by Arrow's JSON reader, column by column: a Python dict per row would cost several
    times the table's memory on a large journal.
    """
    # Lines are written whole, so only the last one can be cut, and a cut line has no newline.
    end = data.rfind(b"\n") + 1
    if not data[:end].strip():
        return empty_table()
    try:
        table = pa_json.read_json(
            pa.BufferReader(pa.py_buffer(data).slice(0, end)),  # no copy of the text
            parse_options=pa_json.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore"),
        )
        return table.select(list(COLUMNS)).cast(SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return rows_to_table(parse_journal(data))  # a damaged line somewhere: the slow, forgiving way


def parse_journal(data: bytes) -> list[dict]:
    """The rows of a journal, line by line; lines that do not parse are skipped."""
    rows = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("key") and row.get("status") in ("ok", "failed"):
            rows.append(row)
    return rows


def journal_line(row: dict) -> bytes:
    return (json.dumps({c: row.get(c) for c in COLUMNS}, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _latest_rows(t: pa.Table) -> pa.Array:
    """Indices of t's latest row per key (latest last_attempt; on a tie the later row), in key order.

    Sorted on three narrow columns, so the wide rows are copied once, by the caller's take.
    """
    narrow = pa.table({"key": t["key"], "last_attempt": t["last_attempt"],
                       "order": pa.array(np.arange(t.num_rows, dtype=np.int64))})
    idx = pc.sort_indices(narrow, sort_keys=[("key", "ascending"), ("last_attempt", "ascending"), ("order", "ascending")])
    keys = t["key"].take(idx).combine_chunks()
    if t.num_rows > 1:
        mask = pa.concat_arrays([pc.not_equal(keys.slice(0, t.num_rows - 1), keys.slice(1)), pa.array([True])])
    else:
        mask = pa.array([True] * t.num_rows, pa.bool_())
    return idx.filter(mask)


def _concat(tables: Iterable[pa.Table | None]) -> pa.Table:
    tables = [t.select(list(COLUMNS)).cast(SCHEMA) for t in tables if t is not None and t.num_rows]
    return pa.concat_tables(tables) if tables else empty_table()


def latest_per_key(tables: Iterable[pa.Table | None]) -> pa.Table:
    """One row per key, sorted by key: the one with the latest last_attempt; on a tie, the one from the later table."""
    t = _concat(tables)
    return t.take(_latest_rows(t)) if t.num_rows else t


def read_ledger(uri: str) -> pa.Table:
    """ledger.parquet at uri (local or gs://), or an empty table when there is none."""
    if not storage.exists(uri):
        return empty_table()
    try:
        table = pq.read_table(uri if not storage.is_gcs(uri) else io.BytesIO(storage.read_bytes(uri)))
    except Exception as e:  # noqa: BLE001 - a ledger we cannot read must be named, not a traceback
        raise LedgerError(f"{uri} is not a readable ledger ({e}); move it aside to start that folder afresh") from e
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise LedgerError(f"{uri} lacks the ledger columns {missing}; it was not written by this step")
    return table.select(list(COLUMNS)).cast(SCHEMA)


def write_ledger(table: pa.Table, uri: str, rows: pa.Array | None = None) -> None:
    """Writes table (or its rows at the indices `rows`) as the ledger, atomically: a reader sees the
    old ledger or the whole new one. Rows are copied a slice at a time, never all at once."""
    rows = rows if rows is not None else pa.array(np.arange(table.num_rows, dtype=np.uint64))
    gcs = storage.is_gcs(uri)
    sink = io.BytesIO() if gcs else f"{uri}.{os.getpid()}.tmp"
    with pq.ParquetWriter(sink, SCHEMA) as writer:
        for start in range(0, len(rows), WRITE_SLICE):
            writer.write_table(table.take(rows.slice(start, WRITE_SLICE)))
        if not len(rows):
            writer.write_table(empty_table())
    if gcs:
        storage.write_bytes(uri, sink.getvalue())
        return
    with open(sink, "rb") as f:
        os.fsync(f.fileno())
    os.replace(sink, uri)


def load_state(root: str) -> tuple[pa.Table, list[str]]:
    """The latest row per key of a folder (ledger.parquet plus its journals) and the journal files read."""
    journals = sorted(f for f in storage.list_files(storage.join(root, JOURNAL_DIR)) if f.endswith(".jsonl"))
    return latest_per_key(_state_tables(root, journals)), journals


def _state_tables(root: str, journals: list[str]) -> list[pa.Table]:
    tables = [read_ledger(storage.join(root, LEDGER_FILE))]
    for j in journals:
        tables.extend(_read_journal_file(j))
    return tables


def _read_journal_file(uri: str) -> list[pa.Table]:
    """A journal in tables of at most JOURNAL_BLOCK bytes of text each: the text is never all in memory."""
    if storage.is_gcs(uri):  # a store's segments are small
        return [read_journal(storage.read_bytes(uri))]
    tables, carry = [], b""
    with open(uri, "rb") as f:
        while True:
            block = f.read(JOURNAL_BLOCK)
            data = carry + block
            if not block:
                tables.append(read_journal(data))  # a last line with no newline was cut by a kill
                return tables
            end = data.rfind(b"\n") + 1
            tables.append(read_journal(data[:end]))
            carry = data[end:]


def compact(root: str, keep_keys: pa.Array | None = None, verify_files: bool = False, base: pa.Table | None = None) -> pa.Table:
    """Folds a folder's journals into its ledger.parquet, then deletes them; keep_keys limits the rows kept.

    Returns the ledger's SUMMARY_COLUMNS (enough for summarize()), not the whole ledger.

    base: older rows to fold in as well (what a store knew). verify_files drops an `ok` row whose
    image is missing or of another size, so the ledger never claims a file that is not there
    (the key is then fetched again next time).
    """
    journals = sorted(f for f in storage.list_files(storage.join(root, JOURNAL_DIR)) if f.endswith(".jsonl"))
    t = _concat([base, *_state_tables(root, journals)])
    idx = _latest_rows(t) if t.num_rows else pa.array([], pa.uint64())
    if keep_keys is not None and len(idx):
        idx = idx.filter(pc.is_in(t["key"].take(idx), value_set=keep_keys).combine_chunks())
    if verify_files and not storage.is_gcs(root) and len(idx):
        narrow = t.select(["key", "status", "format", "bytes"]).take(idx)
        idx = idx.filter(pa.array(_files_present(root, narrow), type=pa.bool_()))
    write_ledger(t, storage.join(root, LEDGER_FILE), idx)
    # Deleted only once the ledger that holds their rows is in place: a kill in between re-reads them, harmlessly.
    for j in journals:
        storage.delete(j)
    return t.select(list(SUMMARY_COLUMNS)).take(idx)


def _files_present(root: str, table: pa.Table) -> list[bool]:
    out = []
    for batch in table.select(["key", "status", "format", "bytes"]).to_batches(max_chunksize=65536):
        for key, status, fmt, size in zip(*(c.to_pylist() for c in batch.columns)):
            if status != OK:
                out.append(True)
                continue
            try:
                out.append(os.path.getsize(os.path.join(root, IMAGES_DIR, f"{key}.{fmt}")) == size)
            except OSError:
                out.append(False)
    return out


def summarize(table: pa.Table) -> dict:
    """Counts per error class over the ledger rows, as the study's table of failures."""
    counts = {c: 0 for c in ERROR_CLASSES}
    if table.num_rows:
        for item in pc.value_counts(table["error_class"]).to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + int(item["counts"])
    total = int(table.num_rows)
    transient = 0
    if table.num_rows:
        retried_4xx = pc.and_(pc.equal(table["error_class"], "http_4xx"),
                              pc.is_in(table["http_status"], value_set=pa.array(sorted(TRANSIENT_HTTP_STATUS), pa.int32())))
        mask = pc.or_(pc.is_in(table["error_class"], value_set=pa.array(sorted(TRANSIENT_CLASSES))),
                      pc.fill_null(retried_4xx, False))
        transient = int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)
    return {
        "total": total,
        "ok": counts[OK],
        "failed": total - counts[OK],
        "transient_failed": transient,  # fetched again by the next run
        "counts": counts,
        "shares": {c: (n / total if total else 0.0) for c, n in counts.items()},
    }


def format_table(summary: dict) -> str:
    """The summary as the study printed it: error class, count, share."""
    lines = [f"{'error class':<20} {'count':>9} {'share':>8}"]
    total = summary["total"]
    for cls, n in summary["counts"].items():
        if n or cls == OK:
            lines.append(f"{cls:<20} {n:>9} {100.0 * n / total if total else 0.0:>7.2f}%")
    lines.append(f"{'total':<20} {total:>9} {100.0 if total else 0.0:>7.2f}%")
    return "\n".join(lines)


class LedgerError(Exception):
    """A ledger or journal that cannot be used; the message says which file and what to do."""
