"""Reads an EmotioNet-format sheet (.xlsx or .csv, local or gs://), checks every row and writes the manifest (contract 1)."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np

from components.common import labels, storage
from components.common.errors import StepRefusal
from components.common.manifest import INGEST_SUMMARY_FILE, MANIFEST_FILE, REJECTS_COLUMNS, REJECTS_FILE, sheet_column

SHEET_SUFFIXES = (".xlsx", ".xlsm", ".csv")
N_AU = len(labels.AU_COLUMNS)
# Rows are turned into arrays this many at a time, so a 1M-row sheet never sits in Python lists.
CHUNK_ROWS = 50_000

# Reasons a row is rejected (the `reason` column of rejects.csv).
MISSING_URL = "missing_url"
BAD_SCHEME = "bad_scheme"
WRONG_CELL_COUNT = "wrong_cell_count"
BAD_AU_VALUE = "bad_au_value"
BAD_VALENCE_AROUSAL = "bad_valence_arousal"
CONFLICTING_DUPLICATE = "conflicting_duplicate"


class SheetError(StepRefusal, ValueError):
    """The source is not a sheet this step can read; the message names the file and what was expected."""


@dataclass
class Layout:
    """Where the URL, the AU columns and valence/arousal sit in each row of the source."""

    width: int  # cells a well-formed row has
    url_col: int
    au_cols: list[int]  # index of AU1..AU60 (-1: the sheet has no such column -> 999)
    va_cols: list[int] | None  # [valence, arousal] or None
    has_header: bool
    # The header's other columns, kept in the manifest as text (contract 1's sheet columns): [(index, name)]
    other_cols: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class Result:
    keys: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    others: list[list[str | None]] = field(default_factory=list)  # one list per Layout.other_cols
    au_chunks: list[np.ndarray] = field(default_factory=list)
    va_chunks: list[np.ndarray] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ reading


def _iter_csv(path: str) -> Iterator[list]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        try:
            for row in csv.reader(f):
                yield row
        except UnicodeDecodeError as e:
            raise SheetError(f"{path} is not UTF-8 text ({e}); expected a CSV sheet or an .xlsx file") from None
        except csv.Error as e:
            raise SheetError(f"{path} could not be parsed as CSV ({e})") from None


def _iter_xlsx(path: str, source: str) -> Iterator[list]:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise SheetError(f"{source} is not a readable .xlsx workbook ({e}); expected the EmotioNet sheet saved as .xlsx") from None
    except Exception as e:  # openpyxl raises its own InvalidFileException and friends
        raise SheetError(f"{source} is not a readable .xlsx workbook ({type(e).__name__}: {e})") from None
    try:
        ws = wb.worksheets[0]
        for row in ws.iter_rows(values_only=True):
            cells = list(row)
            # read-only mode pads rows to the sheet's widest row: drop the trailing empty cells
            while cells and (cells[-1] is None or (isinstance(cells[-1], str) and cells[-1] == "")):
                cells.pop()
            yield cells
    finally:
        wb.close()


def _cell_text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _raw(cells: Sequence) -> str:
    """A row's cells as rejects.csv keeps them, so a person can see and fix the row."""
    return json.dumps([_cell_text(c) for c in cells], ensure_ascii=False)


def _is_blank_row(cells: Sequence) -> bool:
    return all(_cell_text(c).strip() == "" for c in cells)


def _parse_au(v) -> int | None:
    """0, 1 or 999 from a cell ('1', 1, 1.0, ' 999 '); None for anything else, blank included."""
    if v is None:
        return None
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, np.integer)):
        x = int(v)
    else:
        text = str(v).strip()
        if not text:
            return None
        try:
            f = float(text)
        except ValueError:
            return None
        if not f.is_integer():
            return None
        x = int(f)
    return x if x in labels.VALID_LABELS else None


def _parse_float(v) -> float | None:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(str(v).strip()) if not isinstance(v, (int, float)) else float(v)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _header_layout(cells: list) -> Layout | None:
    """A layout from a header row (URL / AU1..AU60 / valence / arousal by name), or None if row 1 is data."""
    names = [_cell_text(c).strip().lower().replace(" ", "") for c in cells]
    au_index = {}
    for i, n in enumerate(names):
        tag = n[2:] if n.startswith("au") else n
        if tag.isdigit() and (n.startswith("au") or i > 0):
            au = int(tag)
            if au in labels.ALL_AU_IDS:
                au_index[au] = i
    looks_like_header = any(n.startswith("au") and n[2:].isdigit() for n in names) or (
        names and names[0] in ("url", "image", "image_url", "imageurl", "link")
    )
    if not looks_like_header:
        return None
    url_col = next((i for i, n in enumerate(names) if n in ("url", "image", "image_url", "imageurl", "link")), 0)
    va = None
    if "valence" in names and "arousal" in names:
        va = [names.index("valence"), names.index("arousal")]
    au_cols = [au_index.get(a, -1) for a in labels.ALL_AU_IDS]
    return Layout(
        width=len(cells),
        url_col=url_col,
        au_cols=au_cols,
        va_cols=va,
        has_header=True,
        other_cols=_other_columns(cells, {url_col, *au_cols, *(va or [])}),
    )


def _other_columns(header: list, used: set[int]) -> list[tuple[int, str]]:
    """(index, name) of each header column the layout does not read (source_site, age_group, ...), by its header
    text; a blank header cell names nothing to keep, and a repeated name gets "_2", "_3"."""
    out: list[tuple[int, str]] = []
    taken: set[str] = set()
    for i, cell in enumerate(header):
        name = _cell_text(cell).strip()
        if i in used or not name:
            continue
        unique, n = name, 1
        while unique in taken:
            n += 1
            unique = f"{name}_{n}"
        taken.add(unique)
        out.append((i, unique))
    return out


def _headerless_layout(width: int, source: str) -> Layout:
    if width == 1 + N_AU:
        va = None
    elif width == 1 + N_AU + 2:
        va = [1 + N_AU, 2 + N_AU]
    else:
        raise SheetError(
            f"{source}: rows have {width} cells; expected the EmotioNet layout with no header: the URL, then "
            f"AU1..AU60 ({1 + N_AU} cells), optionally followed by valence and arousal ({3 + N_AU} cells), "
            "or a header row naming the URL and AU columns"
        )
    return Layout(width=width, url_col=0, au_cols=list(range(1, 1 + N_AU)), va_cols=va, has_header=False)


def _sniff_width(rows: list[list]) -> int:
    """The cell count most rows share (a broken first row must not decide the layout)."""
    widths = Counter(len(r) for r in rows if not _is_blank_row(r))
    if not widths:
        return 0
    # Prefer a width the EmotioNet layout allows; on a tie the plain layout (no valence/arousal),
    # since a URL split by unquoted commas makes a plain row look wider, never narrower.
    allowed = [w for w in (1 + N_AU, 3 + N_AU) if widths.get(w)]
    if allowed:
        return max(allowed, key=lambda w: (widths[w], -w))
    return widths.most_common(1)[0][0]


# ------------------------------------------------------------------------------------------ checking


def _rejoin_url(cells: list, layout: Layout) -> tuple[list | None, str]:
    """A CSV row whose unquoted URL was split at its commas: (the row with the URL's cells joined back,
    "") when that gives every label column a valid label, else (None, why not).

    The extra cells are taken to follow the URL column's cell. When they are all numbers they may
    just as well be stray label cells (a row with two labels too many), so the row is not guessed at.
    """
    extra = len(cells) - layout.width
    u = layout.url_col
    pieces = cells[u:u + extra + 1]
    rejoined = list(cells[:u]) + [",".join(_cell_text(c) for c in pieces)] + list(cells[u + extra + 1:])
    if any(col >= 0 and _parse_au(rejoined[col]) is None for col in layout.au_cols) or (
            layout.va_cols is not None and any(_parse_float(rejoined[col]) is None for col in layout.va_cols)):
        return None, ""
    if all(_parse_float(p) is not None for p in pieces[1:]):
        return None, (f"; the {extra} cell(s) after the URL are numbers, so they may be labels as well as parts of a "
                      "URL with unquoted commas: quote the URL (\"http://...,...\") or remove the extra cells")
    return rejoined, ""


def _check_row(cells: list, layout: Layout, is_csv: bool):
    """(url, au[60], va or None, the other columns' text) for a good row, or (reason, detail) for a bad one."""
    width = layout.width
    why = ""
    if is_csv and len(cells) > width:
        rejoined, why = _rejoin_url(cells, layout)
        if rejoined is not None:
            cells = rejoined
    if len(cells) < width and not is_csv:
        cells = list(cells) + [None] * (width - len(cells))  # xlsx drops trailing empty cells
    if len(cells) != width:
        return None, (WRONG_CELL_COUNT, f"{len(cells)} cells, expected {width}{why}")
    url = _cell_text(cells[layout.url_col])
    if not url.strip():
        return None, (MISSING_URL, "no URL in the URL column")
    try:
        scheme = urlsplit(url.strip()).scheme.lower()
    except ValueError as e:
        return None, (BAD_SCHEME, f"unparseable URL ({e})")
    if scheme not in ("http", "https"):
        return None, (BAD_SCHEME, f"scheme {scheme or '(none)'!r}; only http and https URLs can be downloaded")
    au = np.full(N_AU, labels.UNKNOWN, dtype=np.int16)
    for j, col in enumerate(layout.au_cols):
        if col < 0:
            continue
        v = _parse_au(cells[col])
        if v is None:
            shown = _cell_text(cells[col])
            return None, (BAD_AU_VALUE, f"AU{j + 1} is {shown!r}" + (" (blank)" if not shown.strip() else "") + "; expected 0, 1 or 999")
        au[j] = v
    va = None
    if layout.va_cols is not None:
        va = []
        for name, col in zip(labels.VA_COLUMNS, layout.va_cols):
            f = _parse_float(cells[col])
            if f is None:
                return None, (BAD_VALENCE_AROUSAL, f"{name} is {_cell_text(cells[col])!r}; expected a number")
            va.append(f)
    others = [_cell_text(cells[col]).strip() or None for col, _ in layout.other_cols]
    return (url, au, va, others), None


# ------------------------------------------------------------------------------------------ the step


def read_sheet(source: str, local_path: str):
    """Yields (row_number, cells) of the sheet and the layout; raises SheetError if it is not a sheet."""
    if not source.strip():
        raise SheetError("no sheet given: pass --source with the path or gs:// URI of the EmotioNet sheet (.xlsx or .csv)")
    lower = source.lower()
    suffix = next((s for s in SHEET_SUFFIXES if lower.endswith(s)), None)
    if suffix is None:
        raise SheetError(
            f"{source}: unsupported file type {os.path.splitext(source)[1] or '(none)'!r}; expected the EmotioNet "
            "sheet as .xlsx or .csv"
        )
    if not os.path.exists(local_path):
        raise SheetError(f"{source} does not exist; pass --source with the path or gs:// URI of the sheet")
    if os.path.getsize(local_path) == 0:
        raise SheetError(f"{source} is empty; expected the EmotioNet sheet (URL then AU1..AU60 per row)")
    is_csv = suffix == ".csv"
    reader = (lambda: _iter_csv(local_path)) if is_csv else (lambda: _iter_xlsx(local_path, source))
    head = []
    for cells in reader():
        head.append(cells)
        if len(head) >= 200:
            break
    nonblank = [r for r in head if not _is_blank_row(r)]
    if not nonblank:
        raise SheetError(f"{source} has no rows; expected the EmotioNet sheet (URL then AU1..AU60 per row)")
    layout = _header_layout(nonblank[0])
    if layout is not None:
        if all(c < 0 for c in layout.au_cols):
            raise SheetError(f"{source}: the header names no AU columns (AU1..AU60); found {nonblank[0][:8]}...")
    else:
        layout = _headerless_layout(_sniff_width(nonblank), source)
    return reader, layout, is_csv


def run(source: str, output_dir: str) -> dict:
    """Ingests one sheet into output_dir: manifest.parquet, rejects.csv, ingest_summary.json. Returns the summary."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(output_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = storage.local_copy(source, tmp)
        except Exception as e:  # a gs:// object that is missing or unreadable
            if storage.is_gcs(source):
                raise SheetError(f"{source} could not be read from Cloud Storage ({type(e).__name__}: {e})") from None
            raise
        reader, layout, is_csv = read_sheet(source, local)
        # Which sheet exactly: the model card of every model trained from it names this digest.
        digest = hashlib.sha256()
        with open(local, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        res = Result(others=[[] for _ in layout.other_cols])
        au_buf: list[np.ndarray] = []
        va_buf: list[list[float]] = []
        rejects: list[tuple[int, str, str, str]] = []
        seen: dict[str, int] = {}  # url -> index in res
        conflicted: set[str] = set()
        dup_copies: dict[str, list[tuple[int, str]]] = {}  # url -> later copies (row, raw cells)
        rows_read = 0
        label_rows: dict[int, bytes] = {}  # index -> label bytes, to compare duplicates cheaply

        def flush():
            if au_buf:
                res.au_chunks.append(np.stack(au_buf))
                au_buf.clear()
                if layout.va_cols is not None:
                    res.va_chunks.append(np.asarray(va_buf, dtype=np.float32))
                    va_buf.clear()

        for row_number, cells in enumerate(reader(), start=1):
            if layout.has_header and row_number == 1:
                continue
            if _is_blank_row(cells):
                continue
            rows_read += 1
            ok, bad = _check_row(list(cells), layout, is_csv)
            if bad:
                rejects.append((row_number, bad[0], bad[1], _raw(cells)))
                continue
            url, au, va, others = ok
            signature = au.tobytes() + (np.asarray(va, dtype=np.float32).tobytes() if va is not None else b"")
            if url in seen:
                idx = seen[url]
                raw = _raw(cells)
                dup_copies.setdefault(url, []).append((row_number, raw))
                if label_rows[idx] != signature:
                    conflicted.add(url)
                continue
            seen[url] = len(res.urls)
            label_rows[len(res.urls)] = signature
            res.urls.append(url)
            res.keys.append(labels.image_key(url))
            res.rows.append(row_number)
            for column, value in zip(res.others, others):
                column.append(value)
            au_buf.append(au)
            if va is not None:
                va_buf.append(va)
            if len(au_buf) >= CHUNK_ROWS:
                flush()
        flush()

    au = np.concatenate(res.au_chunks) if res.au_chunks else np.zeros((0, N_AU), dtype=np.int16)
    keep = np.ones(len(res.urls), dtype=bool)
    duplicates = 0
    for url, copies in dup_copies.items():
        idx = seen[url]
        if url not in conflicted:
            duplicates += len(copies)
            continue
        # Every copy of a URL whose copies disagree is rejected: no one of them can be trusted.
        keep[idx] = False
        rows_text = ", ".join(str(r) for r in [res.rows[idx]] + [r for r, _ in copies])
        detail = f"the URL appears on rows {rows_text} with different labels"
        rejects.append((res.rows[idx], CONFLICTING_DUPLICATE, detail,
                        json.dumps([url] + [int(v) for v in au[idx]], ensure_ascii=False)))
        for r, raw in copies:
            rejects.append((r, CONFLICTING_DUPLICATE, detail, raw))
    cols = {
        "key": pd.Series(np.asarray(res.keys, dtype=object)[keep], dtype=object),
        "url": pd.Series(np.asarray(res.urls, dtype=object)[keep], dtype=object),
    }
    for j, name in enumerate(labels.AU_COLUMNS):
        cols[name] = au[keep, j].astype(np.int16)
    if layout.va_cols is not None:
        va_arr = np.concatenate(res.va_chunks) if res.va_chunks else np.zeros((0, 2), dtype=np.float32)
        cols["valence"] = va_arr[keep, 0].astype(np.float32)
        cols["arousal"] = va_arr[keep, 1].astype(np.float32)
    cols["row"] = np.asarray(res.rows, dtype=np.int64)[keep]
    manifest = pa.Table.from_pandas(pd.DataFrame(cols), preserve_index=False)
    for (_, name), values in zip(layout.other_cols, res.others):
        # Typed as text even where every cell is blank (pandas would infer a column of nulls).
        kept_values = [v for v, k in zip(values, keep) if k]
        manifest = manifest.append_column(sheet_column(name), pa.array(kept_values, type=pa.string()))
    pq.write_table(manifest, os.path.join(output_dir, MANIFEST_FILE))

    rejects.sort(key=lambda r: r[0])
    rejects_path = os.path.join(output_dir, REJECTS_FILE)
    with open(rejects_path + ".tmp", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(REJECTS_COLUMNS)
        w.writerows(rejects)
    os.replace(rejects_path + ".tmp", rejects_path)

    kept = au[keep]
    summary = {
        "source": source,
        "source_sha256": digest.hexdigest(),
        "header_row": layout.has_header,
        "has_valence_arousal": layout.va_cols is not None,
        # The sheet's other columns, kept in the manifest as "sheet:<name>" (contract 1)
        "sheet_columns": [name for _, name in layout.other_cols],
        "rows_read": rows_read,
        "kept": int(keep.sum()),
        "rejected": len(rejects),
        "duplicates_collapsed": duplicates,
        "rejected_by_reason": dict(sorted(Counter(r[1] for r in rejects).items())),
        "au_counts": {
            name: {str(v): int((kept[:, j] == v).sum()) for v in labels.VALID_LABELS}
            for j, name in enumerate(labels.AU_COLUMNS)
        },
    }
    storage.write_text(os.path.join(output_dir, INGEST_SUMMARY_FILE), json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict) -> str:
    """The summary as the table a person reads: rows, rejects by reason, and per AU how often it is annotated."""
    lines = [
        f"source: {summary['source']}",
        f"rows read {summary['rows_read']}, kept {summary['kept']}, rejected {summary['rejected']}, "
        f"duplicates collapsed {summary['duplicates_collapsed']}",
    ]
    if summary["rejected_by_reason"]:
        lines.append("rejected by reason: " + ", ".join(f"{k} {v}" for k, v in summary["rejected_by_reason"].items()))
    if summary.get("sheet_columns"):
        lines.append("other columns kept (evaluate --slice-by can name them): " + ", ".join(summary["sheet_columns"]))
    lines.append("")
    lines.append(f"{'AU':>5} {'0':>8} {'1':>8} {'999':>8} {'annotated':>10}")
    for name, c in summary["au_counts"].items():
        total = c["0"] + c["1"] + c["999"]
        annotated = (c["0"] + c["1"]) / total if total else 0.0
        lines.append(f"{name:>5} {c['0']:>8} {c['1']:>8} {c['999']:>8} {annotated:>9.1%}")
    well = [n for n, c in summary["au_counts"].items() if (c["0"] + c["1"]) > 0.5 * max(1, c["0"] + c["1"] + c["999"])]
    lines.append("")
    lines.append(f"{len(well)} of {len(summary['au_counts'])} AUs are annotated on more than half of the kept rows")
    return "\n".join(lines)
