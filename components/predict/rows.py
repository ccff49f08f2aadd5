"""predict's table in OpenFace's spirit (a row per image or frame and face, AU01_r/AU01_c per AU) and its writers."""
from __future__ import annotations

import csv
import os
import sys

from components.common import labels

FILE, FRAME, TIMESTAMP, FACE_ID, FACE = "file", "frame", "timestamp", "face_id", "face"
SUCCESS, REASON = "success", "reason"  # 1 when a face was scored; else 0 and why not
BOX = ("x", "y", "width", "height")  # the face's box in the picture's pixels (the whole picture for a whole model)
CONFIDENCE, ANGLE = "confidence", "angle"  # the detector's score; degrees the crop was turned to level the eyes
FORMATS = (".csv", ".parquet")


def au_columns(au_ids: list[int]) -> tuple[list[str], list[str]]:
    """(["AU01_r", ...], ["AU01_c", ...]): OpenFace's names, AU numbers of two digits."""
    return [f"AU{int(a):02d}_r" for a in au_ids], [f"AU{int(a):02d}_c" for a in au_ids]


def columns(task: str, au_ids: list[int]) -> list[str]:
    """Every column, in order: for a valence/arousal model the AU columns are valence and arousal."""
    head = [FILE, FRAME, TIMESTAMP, FACE_ID, FACE, SUCCESS, REASON, *BOX, CONFIDENCE, ANGLE]
    if task == "va":
        return head + list(labels.VA_COLUMNS)
    r, c = au_columns(au_ids)
    return head + r + c


def _face_values(face: dict, task: str, au_ids: list[int]) -> dict:
    row = dict(zip(BOX, face["box"]))
    row[CONFIDENCE], row[ANGLE] = face.get("score"), face.get("angle")
    if task == "va":
        row.update({name: face.get(name) for name in labels.VA_COLUMNS})
        return row
    r, c = au_columns(au_ids)
    active = set(face["active"])
    for a, rc, cc in zip(au_ids, r, c):
        key = f"AU{int(a)}"
        row[rc] = face["probabilities"].get(key)
        row[cc] = int(key in active)
    return row


def result_rows(result: dict, task: str, au_ids: list[int], frame: int | None = None, timestamp: float | None = None,
                face_ids: list[int] | None = None, file: str | None = None) -> list[dict]:
    """The rows of one scored picture (a Scorer result): one per face, or one saying why there is none.
    A video frame's rows name the video (file), the frame and its time, and the face ids kept across frames."""
    base = {FILE: file or result["image"], FRAME: frame, TIMESTAMP: None if timestamp is None else round(timestamp, 3)}
    if not result["faces"]:
        return [{**base, FACE_ID: None, FACE: None, SUCCESS: 0, REASON: result.get("reason") or "no_face"}]
    rows = []
    for i, face in enumerate(result["faces"]):
        face_id = face_ids[i] if face_ids is not None else face["face"]
        rows.append({**base, FACE_ID: face_id, FACE: face["face"], SUCCESS: 1, REASON: None,
                     **_face_values(face, task, au_ids)})
    return rows


class RowWriter:
    """Writes rows as they come to a .csv or .parquet file, or CSV to stdout (path "-"): memory stays flat
    however many frames a video has (Parquet is written one row group per `flush_rows`)."""

    def __init__(self, path: str, cols: list[str], flush_rows: int = 4096):
        self.path, self.columns, self.rows_written = path, list(cols), 0
        self.format = ".csv" if path == "-" else os.path.splitext(path)[1].lower()
        if self.format not in FORMATS:
            raise ValueError(f"{path}: rows are written as .csv or .parquet; name the file so")
        self._pending: list[dict] = []
        self._flush_rows = int(flush_rows)
        self._parquet = None
        if path != "-" and os.path.dirname(os.path.abspath(path)):
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if self.format == ".csv":
            self._file = sys.stdout if path == "-" else open(path, "w", newline="", encoding="utf-8")
            self._csv = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
            self._csv.writeheader()

    def write(self, rows: list[dict]) -> None:
        self.rows_written += len(rows)
        if self.format == ".csv":
            self._csv.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
            return
        self._pending.extend(rows)
        if len(self._pending) >= self._flush_rows:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._pending and self._parquet is not None:
            return
        table = pa.Table.from_pylist([{c: row.get(c) for c in self.columns} for row in self._pending],
                                     schema=self._schema())
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, table.schema)
        self._parquet.write_table(table)
        self._pending = []

    def _schema(self):
        import pyarrow as pa

        types = {FILE: pa.string(), FRAME: pa.int64(), TIMESTAMP: pa.float64(), FACE_ID: pa.int64(),
                 FACE: pa.int64(), SUCCESS: pa.int8(), REASON: pa.string()}
        return pa.schema([(c, types.get(c, pa.int8() if c.endswith("_c") else pa.float64())) for c in self.columns])

    def close(self) -> None:
        if self.format == ".parquet":
            self._flush()
            self._parquet.close()
        elif self._file is not sys.stdout:
            self._file.close()
        else:
            self._file.flush()

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
