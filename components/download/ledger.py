"""How download writes the ledger of contract 2 (components.common.ledger): the append-only journal, compaction and the summary."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from components.common import storage
from components.common.ledger import (COLUMNS, ERROR_CLASSES, IMAGES_DIR, LEDGER_FILE, OK, SCHEMA, TRANSIENT_CLASSES,
                                      TRANSIENT_HTTP_STATUS, LedgerError, check_columns, empty_table)
from components.download import merge

JOURNAL_DIR = "journal"
SUMMARY_COLUMNS = ("key", "status", "error_class", "http_status")
# Compaction reads a journal's text, sorts its rows and writes the ledger in pieces (merge.py): memory
# stays bounded whatever the ledger's size.
JOURNAL_BLOCK = 8 * 1024 * 1024
WRITE_ROWS = 16384  # rows to a row group of ledger.parquet


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
    """Indices of t's latest row per key (latest last_attempt; on a tie the later row, by merge.ORDER
    where t has it, else by position), in key order.

    Sorted on three narrow columns, so the wide rows are copied once, by the caller's take.
    """
    order = t[merge.ORDER] if merge.ORDER in t.column_names else pa.array(np.arange(t.num_rows, dtype=np.int64))
    narrow = pa.table({"key": t["key"], "last_attempt": t["last_attempt"], "order": order})
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
    """One row per key, sorted by key: the one with the latest last_attempt; on a tie, the one from the later table.
    In memory: for tables that fit; fold() does the same for any number of rows."""
    t = _concat(tables)
    return t.take(_latest_rows(t)) if t.num_rows else t


def _with_order(t: pa.Table, source: int, first_row: int) -> pa.Table:
    """t in the ledger's columns plus merge.ORDER: source number, then row number, so later inputs win ties."""
    t = t.select(list(COLUMNS)).cast(SCHEMA)
    order = (np.int64(source) << 40) + np.arange(first_row, first_row + t.num_rows, dtype=np.int64)
    return t.append_column(merge.ORDER, pa.array(order))


def ledger_source(path: str, source: int = 0) -> Iterator[pa.Table]:
    """A local ledger.parquet (sorted by key, as this module writes it), a batch at a time with merge.ORDER.
    The file is opened and checked here, before the first batch is asked for."""
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - a ledger we cannot read must be named, not a traceback
        raise LedgerError(f"{path} is not a readable ledger ({e}); move it aside to start that folder afresh") from e
    check_columns(pf.schema_arrow.names, path)

    def batches():
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=merge.READ_ROWS, columns=list(COLUMNS)):
                yield _with_order(pa.Table.from_batches([batch]), source, row)
                row += batch.num_rows
        except (pa.ArrowInvalid, OSError) as e:
            raise LedgerError(f"{path} is damaged ({e}); move it aside to start that folder afresh") from e
    return batches()


class _LedgerWriter:
    """Writes ledger.parquet at uri atomically (a reader sees the old ledger or the whole new one),
    from tables handed over in key order, WRITE_ROWS rows to a row group."""

    def __init__(self, uri: str, workdir: str, generation: int | None = None, local_copy: str | None = None):
        self.uri = uri
        self.generation = generation  # gs://: write only over this generation of the ledger (0: none)
        self.gcs = storage.is_gcs(uri)
        self.local_copy = local_copy  # gs://: the uploaded file is kept here instead of deleted
        self.tmp = os.path.join(workdir, "ledger.upload.parquet") if self.gcs else f"{uri}.{os.getpid()}.tmp"
        self._writer = pq.ParquetWriter(self.tmp, SCHEMA)
        self._buf: list[pa.Table] = []
        self._buffered = 0

    def write(self, t: pa.Table) -> None:
        if t.num_rows:
            self._buf.append(t)
            self._buffered += t.num_rows
            if self._buffered >= WRITE_ROWS:
                self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._writer.write_table(pa.concat_tables(self._buf), row_group_size=WRITE_ROWS)
        self._buf, self._buffered = [], 0

    def commit(self) -> None:
        self._flush()
        self._writer.close()
        if self.gcs:
            try:
                if self.generation is None:
                    storage.upload_file(self.tmp, self.uri)
                elif not storage.upload_file_if_generation(self.tmp, self.uri, self.generation):
                    raise LedgerError(
                        f"{self.uri} was rewritten by another run while this one folded its journals in; this run "
                        "left it as it is and kept the journals, which the next run folds in")
                if self.local_copy:
                    os.replace(self.tmp, self.local_copy)
            finally:
                if os.path.exists(self.tmp):
                    os.unlink(self.tmp)
            return
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.uri)

    def abort(self) -> None:
        self._writer.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def fold(sources: list[Iterable[pa.Table]], out_uri: str, workdir: str, keep: str | None = None,
         verify_root: str | None = None, generation: int | None = None, local_copy: str | None = None) -> dict:
    """Writes the latest row per key of the sources as the ledger at out_uri; returns its summary().

    sources: inputs sorted by key, in the ledger's columns plus merge.ORDER (ledger_source(),
    journal runs). keep: a file sorted by key whose `key` column lists the keys to keep (the
    manifest); None keeps all. verify_root: a local folder whose images/ must hold each `ok` row's
    file at its size, or the row is dropped (the key is then fetched again next time), so the
    ledger never claims a file that is not there. Memory is a few batches per source, whatever
    the number of rows. generation (gs:// only): the ledger is written only if out_uri is still at
    that generation (0: absent), else LedgerError; so two runs can never lose each other's rows.
    local_copy (gs:// only): a local path where the file that was uploaded is kept.
    """
    streams = list(sources) + ([merge.read_batches(keep, columns=["key"])] if keep else [])
    tally = Tally()
    writer = _LedgerWriter(out_uri, workdir, generation, local_copy)
    try:
        for parts in merge.merge(streams):
            rows = [p for p in (parts[:-1] if keep else parts) if p is not None and p.num_rows]
            if not rows:
                continue
            t = pa.concat_tables(rows)
            t = t.take(_latest_rows(t))
            if keep:
                wanted = parts[-1]
                if wanted is None or not wanted.num_rows:
                    continue
                t = t.filter(pc.is_in(t["key"], value_set=wanted["key"].combine_chunks()))
            t = t.select(list(COLUMNS))
            if verify_root is not None and t.num_rows:
                t = t.filter(pa.array(_files_present(verify_root, t), type=pa.bool_()))
            writer.write(t)
            tally.add(t)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    return tally.summary()


def journals_of(root: str) -> list[str]:
    """A folder's journal files, in the order they were written."""
    return sorted(f for f in storage.list_files(storage.join(root, JOURNAL_DIR)) if f.endswith(".jsonl"))


def _journal_tables(uri: str) -> Iterator[pa.Table]:
    """A journal in tables of at most JOURNAL_BLOCK bytes of text each: the text is never all in memory."""
    if storage.is_gcs(uri):  # a store's segments are small
        yield read_journal(storage.read_bytes(uri))
        return
    carry = b""
    with open(uri, "rb") as f:
        while True:
            block = f.read(JOURNAL_BLOCK)
            data = carry + block
            if not block:
                yield read_journal(data)  # a last line with no newline was cut by a kill
                return
            end = data.rfind(b"\n") + 1
            yield read_journal(data[:end])
            carry = data[end:]


def journal_runs(journals: list[str], first_source: int, workdir: str) -> list[str]:
    """The journals' rows as key-sorted runs in workdir (with merge.ORDER: journal by journal, line by line)."""
    spiller = merge.Spiller(workdir, "journal")
    for n, uri in enumerate(journals):
        row = 0
        for t in _journal_tables(uri):
            spiller.add(_with_order(t, first_source + n, row))
            row += t.num_rows
    return spiller.finish()


def compact(root: str, keep: str | None = None, verify_files: bool = False, base: str | None = None,
            workdir: str | None = None, local_copy: str | None = None) -> dict:
    """Folds a folder's journals into its ledger.parquet (local or gs://), then deletes them; returns
    the new ledger's summary().

    keep: a key-sorted file listing the keys to keep (None keeps all). base: a local ledger file of
    older rows to fold in as well (what a store knew). verify_files drops an `ok` row whose image is
    missing or of another size, so the ledger never claims a file that is not there (the key is
    then fetched again next time). workdir holds the sorted runs (a temporary folder if None).
    local_copy (gs:// only): a local path that receives the ledger as uploaded, saving a download.
    """
    with tempfile.TemporaryDirectory(prefix="ledger-", dir=workdir) as tmp:
        journals = journals_of(root)
        uri = storage.join(root, LEDGER_FILE)
        sources, generation = [], None
        if base is not None:
            sources.append(ledger_source(base, 0))
        if storage.is_gcs(uri):
            # Written back only over the generation read here (a store's lock guards it too).
            local = os.path.join(tmp, LEDGER_FILE)
            generation = storage.download_versioned(uri, local)
            if generation:
                sources.append(ledger_source(local, 1))
        elif os.path.exists(uri):
            sources.append(ledger_source(uri, 1))
        sources.extend(merge.read_batches(r) for r in journal_runs(journals, 2, tmp))
        summary = fold(sources, uri, tmp, keep=keep, verify_root=root if verify_files and not storage.is_gcs(root) else None,
                       generation=generation, local_copy=local_copy)
    # Deleted only once the ledger that holds their rows is in place: a kill in between re-reads them, harmlessly.
    for j in journals:
        storage.delete(j)
    return summary


def fold_journals(root: str, workdir: str | None = None, local_copy: str | None = None) -> bool:
    """compact(root) when it has journals (rows a run settled since the ledger was last written); True if it had.
    local_copy: as compact's (gs:// only), written only when there were journals to fold."""
    if not journals_of(root):
        return False
    compact(root, workdir=workdir, local_copy=local_copy)
    return True


def _files_present(root: str, table: pa.Table) -> list[bool]:
    out = []
    for key, status, fmt, size in zip(*(table[c].to_pylist() for c in ("key", "status", "format", "bytes"))):
        if status != OK:
            out.append(True)
            continue
        try:
            out.append(os.path.getsize(os.path.join(root, IMAGES_DIR, f"{key}.{fmt}")) == size)
        except OSError:
            out.append(False)
    return out


class Tally:
    """The summary's counts, added up a table at a time."""

    def __init__(self):
        self.counts = {c: 0 for c in ERROR_CLASSES}
        self.total = 0
        self.transient = 0

    def add(self, table: pa.Table) -> "Tally":
        if not table.num_rows:
            return self
        for item in pc.value_counts(table["error_class"]).to_pylist():
            self.counts[item["values"]] = self.counts.get(item["values"], 0) + int(item["counts"])
        self.total += int(table.num_rows)
        retried_4xx = pc.and_(pc.equal(table["error_class"], "http_4xx"),
                              pc.is_in(table["http_status"], value_set=pa.array(sorted(TRANSIENT_HTTP_STATUS), pa.int32())))
        mask = pc.or_(pc.is_in(table["error_class"], value_set=pa.array(sorted(TRANSIENT_CLASSES))),
                      pc.fill_null(retried_4xx, False))
        self.transient += int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)
        return self

    def summary(self) -> dict:
        total = self.total
        return {
            "total": total,
            "ok": self.counts[OK],
            "failed": total - self.counts[OK],
            "transient_failed": self.transient,  # fetched again by the next run
            "counts": dict(self.counts),
            "shares": {c: (n / total if total else 0.0) for c, n in self.counts.items()},
        }


def summarize(table: pa.Table) -> dict:
    """Counts per error class over the ledger rows, as the study's table of failures."""
    return Tally().add(table).summary()


def format_table(summary: dict) -> str:
    """The summary as the study printed it: error class, count, share."""
    lines = [f"{'error class':<20} {'count':>9} {'share':>8}"]
    total = summary["total"]
    for cls, n in summary["counts"].items():
        if n or cls == OK:
            lines.append(f"{cls:<20} {n:>9} {100.0 * n / total if total else 0.0:>7.2f}%")
    lines.append(f"{'total':<20} {total:>9} {100.0 if total else 0.0:>7.2f}%")
    return "\n".join(lines)

