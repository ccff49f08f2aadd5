"""The manifest (contract 1): manifest.parquet, its columns, rejects.csv, ingest_summary.json, and the manifest's reader."""
from __future__ import annotations

import logging

import numpy as np

from components.common import labels, storage
from components.common.tables import column_array, read_columns

_LOG = logging.getLogger(__name__)

# What ingest writes.
MANIFEST_FILE = "manifest.parquet"
REJECTS_FILE = "rejects.csv"
INGEST_SUMMARY_FILE = "ingest_summary.json"
# manifest.parquet: one row per unique image URL. key: image_key(url), the name of every file of the image;
# AU1..AU60 int16 (0, 1, 999); valence, arousal float32 only where the source has them; row: 1-based row of the
# source, for messages.
COLUMNS = ("key", "url") + labels.AU_COLUMNS + labels.VA_COLUMNS + ("row",)
# Then every other column of a sheet with a header row (e.g. source_site, age_group), as a string column named
# SHEET_PREFIX + its header text ("sheet:source_site"), null where the cell is blank (a URL on several rows keeps
# its first row's); a repeated header text gets "_2", "_3". The prefix keeps them apart from the columns above (a sheet may have its own "row" or "key"), and every
# reader selects its columns by name, so none of them reads these (validate's statistics leave them out).
# ingest_summary.json lists them, unprefixed, in "sheet_columns". A sheet without a header row (EmotioNet's own
# .xlsx) has none. evaluate --slice-by names them without the prefix.
SHEET_PREFIX = "sheet:"
# rejects.csv: one line per rejected row of the source.
REJECTS_COLUMNS = ("row", "reason", "detail", "raw")


def sheet_column(name: str) -> str:
    """The manifest column that keeps the sheet's column `name`: "source_site" -> "sheet:source_site"."""
    return SHEET_PREFIX + name


def is_sheet_column(column: str) -> bool:
    """Whether a manifest column is one of the sheet's own (kept by ingest), not of contract 1's fixed columns."""
    return str(column).startswith(SHEET_PREFIX)


def sheet_columns(columns) -> list[str]:
    """The sheet's own columns among a manifest's column names, without the prefix, in the manifest's order."""
    return [str(c)[len(SHEET_PREFIX):] for c in columns if is_sheet_column(c)]


def manifest_path(manifest: str) -> str:
    """The manifest.parquet of a manifest folder (local or gs://), or the .parquet file itself when given."""
    return manifest if str(manifest).endswith(".parquet") else storage.join(manifest, MANIFEST_FILE)


def resolve_manifest(manifest: str) -> str:
    """manifest_path(manifest), which must exist (FileNotFoundError naming it otherwise)."""
    path = manifest_path(manifest)
    if not storage.exists(path):
        raise FileNotFoundError(
            f"manifest {path} does not exist: pass the folder written by ingest (with {MANIFEST_FILE}) or the file"
        )
    return path


def read_manifest(manifest: str):
    """(keys, au (N, 60) int16, va (N, 2) float32 or None) of the manifest, checked against contract 1.

    keys are bytes (S20), in the manifest's order; a key that repeats keeps its first row (with a warning).
    A missing file raises FileNotFoundError; a missing column or a label other than 0, 1, 999, ValueError.
    """
    path = resolve_manifest(manifest)
    wanted = ("key",) + labels.AU_COLUMNS + ("row",) + labels.VA_COLUMNS
    try:
        table = read_columns(path, wanted, ("key",) + labels.AU_COLUMNS, "manifest")
    except ValueError as e:
        raise ValueError(f"{e}: expected key, url, AU1..AU60, row (contract 1); rerun ingest") from None
    keys = np.array(table["key"].to_pylist(), dtype=bytes)
    rows = column_array(table, "row", np.int64) if "row" in table.column_names else np.arange(1, len(keys) + 1)
    au = np.empty((len(keys), len(labels.AU_COLUMNS)), np.int16)
    for j, name in enumerate(labels.AU_COLUMNS):
        # A missing label reads as -1, which the check below reports with its row.
        values = column_array(table, name, np.int64, fill=-1)
        bad = ~np.isin(values, labels.VALID_LABELS)
        if bad.any():
            i = int(bad.argmax())
            raise ValueError(
                f"manifest {path}, row {int(rows[i])} (key {keys[i].decode()}): {name} is "
                f"{'missing' if values[i] == -1 else int(values[i])}; expected 0, 1 or 999 (contract 1); rerun ingest"
            )
        au[:, j] = values
    va = None
    if all(c in table.column_names for c in labels.VA_COLUMNS):
        va = np.stack([column_array(table, c, np.float32, fill=float("nan")) for c in labels.VA_COLUMNS], axis=1)
    del table
    _, first = np.unique(keys, return_index=True)
    if len(first) < len(keys):
        dup = np.setdiff1d(np.arange(len(keys)), first)[0]
        _LOG.warning("manifest %s: key %s appears more than once (row %d); the first row is used",
                     path, keys[dup].decode(), rows[dup])
        first.sort()
        keys, au, va = keys[first], au[first], (va[first] if va is not None else None)
    return keys, au, va


def sheet_identity(manifest: str) -> dict | None:
    """{"uri", "sha256"} of the sheet a manifest was ingested from (its ingest_summary.json), None where it has none."""
    import json

    folder = manifest.rsplit("/", 1)[0] if str(manifest).endswith(".parquet") else manifest
    path = storage.join(folder, INGEST_SUMMARY_FILE)
    try:
        summary = json.loads(storage.read_text(path)) if storage.exists(path) else None
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict):
        return None
    return {"uri": summary.get("source"), "sha256": summary.get("source_sha256")}
