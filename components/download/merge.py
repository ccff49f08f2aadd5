"""External sort and merge of key-sorted tables: what keeps the download ledger's memory bounded
whatever the number of rows.

A table too large to hold is cut into runs of at most RUN_ROWS rows, each sorted by key and
written to a temporary Arrow file (Spiller); runs, and files already sorted by key such as
ledger.parquet, are then read back a batch at a time and merged (merge), so memory holds a few
batches of each input, never a whole table. Past FAN_IN runs, runs are first merged into longer
ones, so the number of inputs read at once stays bounded too.
"""
from __future__ import annotations

import itertools
import os
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

KEY = "key"
ORDER = "_order"  # a row's place among all inputs: on equal keys (and times) the later row wins
RUN_ROWS = 32768  # rows sorted in memory at once
READ_ROWS = 4096  # rows read from each input at a time while merging
FAN_IN = 32  # inputs merged at once


def read_batches(path: str, columns: list[str] | None = None, batch_size: int | None = None) -> Iterator[pa.Table]:
    """The rows of a parquet file or of a run (an Arrow file), at most batch_size (READ_ROWS) at a time."""
    batch_size = batch_size or READ_ROWS
    if path.endswith(".parquet"):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
            yield pa.Table.from_batches([batch])
        return
    with pa.OSFile(path) as f:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            t = pa.Table.from_batches([reader.get_batch(i)])
            yield t.select(columns) if columns else t


def sort_by_key(t: pa.Table) -> pa.Table:
    keys = [(KEY, "ascending")] + ([(ORDER, "ascending")] if ORDER in t.column_names else [])
    return t.take(pc.sort_indices(t, sort_keys=keys))


def write_run(tables: Iterable[pa.Table], path: str, schema: pa.Schema) -> str:
    with pa.OSFile(path, "wb") as f, pa.ipc.new_file(f, schema) as writer:
        for t in tables:
            if t.num_rows:
                writer.write_table(t, max_chunksize=READ_ROWS)
    return path


class Spiller:
    """Collects tables of one schema and writes them to workdir as key-sorted runs; finish() lists the runs."""

    def __init__(self, workdir: str, name: str, run_rows: int | None = None):
        self.workdir, self.name, self.run_rows = workdir, name, run_rows or RUN_ROWS
        self.rows = 0
        self.runs: list[str] = []
        self._buf: list[pa.Table] = []
        self._buffered = 0
        self._schema: pa.Schema | None = None
        self._seq = itertools.count()

    def add(self, t: pa.Table) -> None:
        if not t.num_rows:
            return
        self._schema = self._schema or t.schema
        self._buf.append(t)
        self._buffered += t.num_rows
        self.rows += t.num_rows
        if self._buffered >= self.run_rows:
            self._spill()

    def _path(self) -> str:
        return os.path.join(self.workdir, f"{self.name}-{next(self._seq):06d}.arrow")

    def _spill(self) -> None:
        t = sort_by_key(pa.concat_tables(self._buf))
        self._buf, self._buffered = [], 0
        self.runs.append(write_run([t], self._path(), t.schema))

    def finish(self) -> list[str]:
        """The runs, at most FAN_IN of them (longer runs merged from shorter ones when there were more)."""
        if self._buf:
            self._spill()
        while len(self.runs) > FAN_IN:
            group, self.runs = self.runs[:FAN_IN], self.runs[FAN_IN:]
            self.runs.append(write_run(merge_tables([read_batches(r) for r in group]), self._path(), self._schema))
            for r in group:
                os.unlink(r)
        return self.runs


class _Cursor:
    """One key-sorted input: the rows read from it and not yet handed on."""

    def __init__(self, tables: Iterable[pa.Table]):
        self._it = iter(tables)
        self.buf: pa.Table | None = None
        self.done = False

    @property
    def rows(self) -> int:
        return self.buf.num_rows if self.buf is not None else 0

    def pull(self) -> None:
        """Appends the next non-empty table of the input; at its end, sets done."""
        for t in self._it:
            if t.num_rows:
                self.buf = t if not self.rows else pa.concat_tables([self.buf, t])
                return
        self.done = True

    def last_key(self) -> str:
        return self.buf[KEY][self.buf.num_rows - 1].as_py()

    def take_upto(self, frontier: str | None) -> pa.Table:
        """Removes and returns the rows whose key is at most frontier (all of them for None)."""
        if frontier is None:
            out, self.buf = self.buf, None
            return out
        # The keys are sorted, so the rows wanted are a prefix.
        n = pc.sum(pc.less_equal(self.buf[KEY], frontier)).as_py() or 0
        out, self.buf = self.buf.slice(0, n), self.buf.slice(n)
        return out


def merge(sources: list[Iterable[pa.Table]]) -> Iterator[list[pa.Table | None]]:
    """Merges inputs sorted by key: yields, step by step in key order, a list with one table per input
    (None when it has no rows in the step) holding its rows for the keys of that step.

    Every row of a key, from every input, comes in the same step, so a step can be reduced on its
    own (latest row per key, a join on key). Memory holds about two batches per input.
    """
    cursors = [_Cursor(s) for s in sources]
    while True:
        for c in cursors:
            if not c.rows and not c.done:
                c.pull()
        if not any(c.rows for c in cursors):
            return
        pending = [c for c in cursors if c.rows and not c.done]
        frontier = None
        if pending:
            # Every input still being read has rows up to its last key; the smallest of those is as far as
            # all of them are known. A key may go on in an input's next batch: read on past it.
            frontier = min(c.last_key() for c in pending)
            for c in pending:
                while not c.done and c.last_key() == frontier:
                    c.pull()
        yield [c.take_upto(frontier) if c.rows else None for c in cursors]


def merge_tables(sources: list[Iterable[pa.Table]]) -> Iterator[pa.Table]:
    """merge() for inputs of one schema: each step's rows as one table sorted by key (and ORDER)."""
    for parts in merge(sources):
        yield sort_by_key(pa.concat_tables([p for p in parts if p is not None]))
