"""Metrics per slice (TensorFlow Model Analysis's idea): the test split cut by what each example carries (face size,
head tilt, detector score, grey, face status, unknown AUs, image size, the URL's host, a sheet column), each slice
measured as the whole split is, and the worst one named."""
from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from components.common import examples as ex
from components.common import faces, labels, storage
from components.common import manifest as manifest_contract
from components.evaluate.metrics import DEFAULT_THRESHOLD, compute_metrics

# The features the test split is cut by, in the order the tables show them.
FACE_SHARE = "face_share"  # the face box's side as a share of the source image's shorter side
FACE_PX = "face_px"  # the face box's side in source pixels
HEAD_TILT = "head_tilt"  # |degrees| convert turned the crop so the eyes are level
DETECTOR_SCORE = "detector_score"
GREY = "grey"  # the crop's channels are equal: a greyscale picture
FACE_STATUS = "face_status"  # cropped, whole, no_face_whole
UNKNOWN_AUS = "unknown_aus"  # how many of the model's AUs are 999 (not annotated, often occluded)
IMAGE_SIZE = "image_size"  # the source image's shorter side, px
URL_HOST = "url_host"  # the host of the image's URL: the 10 most frequent, then "other"
FEATURES = (FACE_SHARE, FACE_PX, HEAD_TILT, DETECTOR_SCORE, GREY, FACE_STATUS, UNKNOWN_AUS, IMAGE_SIZE, URL_HOST)
COLUMN_PREFIX = "column:"  # a slice by a manifest column (--slice-by): "column:<name>"

# Bin edges (left-closed): chosen so that the bins of a web-photo split each hold a real share of it.
FACE_SHARE_EDGES = (0.1, 0.2, 0.35, 0.5)
FACE_PX_EDGES = (48, 96, 192, 384)
HEAD_TILT_EDGES = (5, 15, 30)
DETECTOR_SCORE_EDGES = (0.6, 0.7, 0.8, 0.9)
IMAGE_SIZE_EDGES = (256, 512, 1024)
TOP_VALUES = 10  # a many-valued feature (hosts, a sheet column) keeps its most frequent values, then OTHER
OTHER = "other"
NO_BOX = "no face box"  # a whole image: no face size, tilt or score to bin
NOT_RECORDED = "not recorded"  # examples written before the feature existed
GREY_TOLERANCE = 2  # JPEG rounding of a grey picture's channels, in 0..255 levels
DEFAULT_MIN_SIZE = 30
NOTE = ("each slice measured as the whole test split is; a slice's macro F1 and AUC average the AUs with a known "
        "positive and negative in the slice (an AU absent from a slice says nothing of it)")


class SliceError(ValueError):
    """A slice that cannot be made as asked (a --slice-by column the manifest lacks); the message says what to do."""


@dataclass
class Facts:
    """What the test examples carry that slices are made of, one entry per example, in the order they were read."""

    keys: list = field(default_factory=list)
    status: list = field(default_factory=list)
    box: list = field(default_factory=list)  # (xmin, ymin, xmax, ymax) in source pixels, or None
    score: list = field(default_factory=list)
    angle: list = field(default_factory=list)
    source: list = field(default_factory=list)  # (width, height) of the source image, or None
    size: list = field(default_factory=list)  # (width, height) of the example's image (the crop, or the whole)
    grey: list = field(default_factory=list)

    def take(self, order) -> "Facts":
        return Facts(*([getattr(self, f)[i] for i in order] for f in self.__dataclass_fields__))


def is_grey(encoded: bytes) -> bool:
    """Whether a picture's channels are equal (within JPEG's rounding): a greyscale photo stored as RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(encoded)) as im:
        if im.mode in ("1", "L", "LA", "I", "I;16", "F"):
            return True
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return bool(np.abs(rgb[..., 0] - rgb[..., 1]).max() <= GREY_TOLERANCE
                and np.abs(rgb[..., 1] - rgb[..., 2]).max() <= GREY_TOLERANCE)


def _floats(f, name):
    return [float(v) for v in f[name].float_list.value] if name in f else None


def read_facts(files: list[str]) -> Facts:
    """The slice facts of every example of the TFRecord shards (local or gs://), without TensorFlow."""
    out = Facts()
    for path in files:
        data = io.BytesIO(storage.read_bytes(path)) if storage.is_gcs(path) else open(path, "rb")
        with data as fh:
            for record in ex.read_records(fh, path):
                f = ex.decode_example(record).features.feature
                out.keys.append(f[ex.IMAGE_KEY].bytes_list.value[0].decode())
                out.status.append(f[faces.FACE_STATUS].bytes_list.value[0].decode() if faces.FACE_STATUS in f else "")
                box = _floats(f, faces.FACE_BOX)
                out.box.append(tuple(box) if box and len(box) == 4 else None)
                score, angle = _floats(f, faces.FACE_SCORE), _floats(f, faces.FACE_ANGLE)
                out.score.append(score[0] if score else None)
                out.angle.append(angle[0] if angle else None)
                src = [int(v) for v in f[faces.SOURCE_SIZE].int64_list.value] if faces.SOURCE_SIZE in f else []
                out.source.append(tuple(src) if len(src) == 2 else None)
                out.size.append((int(f[ex.IMAGE_WIDTH].int64_list.value[0]),
                                 int(f[ex.IMAGE_HEIGHT].int64_list.value[0])))
                out.grey.append(is_grey(f[ex.IMAGE_ENCODED].bytes_list.value[0]))
    return out


def align(facts: Facts, keys: list[str]) -> Facts:
    """facts in the order of `keys` (the scored test split's); ValueError naming a key the facts lack."""
    if facts.keys == list(keys):
        return facts
    index = {k: i for i, k in enumerate(facts.keys)}
    missing = [k for k in keys if k not in index]
    if missing:
        raise ValueError(f"example {missing[0]} was scored but its facts were not read; the test shards changed "
                         "during evaluate: rerun it")
    return facts.take([index[k] for k in keys])


def bin_label(value, edges, unit: str = "", digits: int = 0) -> str:
    """The bin of a number among left-closed edges: "<48 px", "48-96 px", ..., ">=384 px"."""
    def num(x):
        return f"{x:.{digits}f}" if digits else f"{x:g}"

    suffix = f" {unit}" if unit else ""
    if value < edges[0]:
        return f"<{num(edges[0])}{suffix}"
    for lo, hi in zip(edges, edges[1:]):
        if lo <= value < hi:
            return f"{num(lo)}-{num(hi)}{suffix}"
    return f">={num(edges[-1])}{suffix}"


def bin_order(edges, unit: str = "", digits: int = 0) -> list[str]:
    """Every bin label of the edges, smallest first (the tables' order)."""
    probes = [edges[0] - 1] + list(edges)
    return [bin_label(v, edges, unit, digits) for v in probes]


def top_values(values, top: int = TOP_VALUES) -> list[str]:
    """The values as strings, those beyond the `top` most frequent (ties: alphabetical) as OTHER."""
    counts = Counter(v for v in values if v is not None)
    keep = {v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:top]}
    return [NOT_RECORDED if v is None else (str(v) if v in keep else OTHER) for v in values]


def url_host(url) -> str | None:
    """The host of a URL, lower case, without "www." (www.flickr.com and flickr.com are one site)."""
    from urllib.parse import urlsplit

    if not url:
        return None
    host = (urlsplit(str(url).strip()).hostname or "").lower()
    return host[4:] if host.startswith("www.") else (host or None)


def groups(facts: Facts, y_true: np.ndarray, columns: dict | None = None) -> dict[str, list[str]]:
    """{feature: the slice label of each example}: every feature of FEATURES the facts hold, and each manifest column.

    columns: {"url": [...], "<name>": [...]} aligned with the examples (components.evaluate.slices.manifest_columns);
    the URL's host is made from "url", and every other column becomes a "column:<name>" slice.
    """
    n = len(facts.keys)
    out: dict[str, list[str]] = {}

    def per_box(fn):
        return [NO_BOX if b is None else fn(i, b) for i, b in enumerate(facts.box)]

    def side(b):
        return ((b[2] - b[0]) + (b[3] - b[1])) / 2.0

    if any(b is not None for b in facts.box):
        out[FACE_SHARE] = per_box(lambda i, b: NOT_RECORDED if facts.source[i] is None else
                                  bin_label(side(b) / max(1, min(facts.source[i])), FACE_SHARE_EDGES, digits=2))
        out[FACE_PX] = per_box(lambda i, b: bin_label(side(b), FACE_PX_EDGES, "px"))
        out[HEAD_TILT] = per_box(lambda i, b: NOT_RECORDED if facts.angle[i] is None else
                                 bin_label(abs(facts.angle[i]), HEAD_TILT_EDGES, "deg"))
        out[DETECTOR_SCORE] = per_box(lambda i, b: NOT_RECORDED if facts.score[i] is None else
                                      bin_label(facts.score[i], DETECTOR_SCORE_EDGES, digits=1))
    out[GREY] = ["grey" if g else "colour" for g in facts.grey]
    if any(facts.status):
        out[FACE_STATUS] = [s or NOT_RECORDED for s in facts.status]
    unknown = (np.asarray(y_true) == labels.UNKNOWN).sum(axis=1) if n else np.zeros(0, int)
    out[UNKNOWN_AUS] = [str(int(u)) if u < 3 else ">=3" for u in unknown]
    # The source size where convert recorded it; a whole image's example is the image itself.
    sizes = [s if s is not None else (facts.size[i] if facts.status[i] in (faces.WHOLE, faces.NO_FACE_WHOLE, "")
                                      else None) for i, s in enumerate(facts.source)]
    if any(s is not None for s in sizes):
        out[IMAGE_SIZE] = [NOT_RECORDED if s is None else bin_label(min(s), IMAGE_SIZE_EDGES, "px") for s in sizes]
    for name, values in (columns or {}).items():
        if name == "url":
            out[URL_HOST] = top_values([url_host(u) for u in values])
        else:
            out[COLUMN_PREFIX + name] = top_values([None if _missing(v) else _text(v) for v in values])
    return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _text(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _value_order(feature: str, values) -> list[str]:
    """The slice values of a feature in the tables' order: bins small to large, the rest by size."""
    edges = {FACE_SHARE: (FACE_SHARE_EDGES, "", 2), FACE_PX: (FACE_PX_EDGES, "px", 0),
             HEAD_TILT: (HEAD_TILT_EDGES, "deg", 0), DETECTOR_SCORE: (DETECTOR_SCORE_EDGES, "", 1),
             IMAGE_SIZE: (IMAGE_SIZE_EDGES, "px", 0)}.get(feature)
    counts = Counter(values)
    if edges:
        known = bin_order(*edges)
        return [v for v in known if v in counts] + sorted(v for v in counts if v not in known)
    if feature == UNKNOWN_AUS:
        return [v for v in ("0", "1", "2", ">=3") if v in counts]
    return sorted(counts, key=lambda v: (v in (OTHER, NOT_RECORDED), -counts[v], v))


def _macro(per_label: list[dict], key: str, measured: np.ndarray) -> float | None:
    vals = [d[key] for d, m in zip(per_label, measured) if m]
    vals = [v for v in vals if not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def measure(y_true: np.ndarray, scores: np.ndarray, tuned, au_ids: list[int]) -> dict:
    """One slice's figures: macro F1 and AUC at 0.5 and at the tuned thresholds, and each AU's F1."""
    d = compute_metrics(y_true, scores, DEFAULT_THRESHOLD)
    t = compute_metrics(y_true, scores, np.asarray(tuned, dtype=np.float64))
    measured = np.array([p["positives"] > 0 and p["negatives"] > 0 for p in d["per_label"]])
    per_au = {}
    for a, p, q in zip(au_ids, d["per_label"], t["per_label"]):
        per_au[str(a)] = {"f1": p["f1"], "f1_tuned": q["f1"], "auc": None if math.isnan(p["auc"]) else p["auc"],
                          "positives": p["positives"], "negatives": p["negatives"]}
    auc = _macro(d["per_label"], "auc", measured)
    return {"macro_f1": _macro(d["per_label"], "f1", measured), "macro_auc": auc,
            "macro_f1_tuned": _macro(t["per_label"], "f1", measured), "macro_auc_tuned": auc,
            "aus_measured": int(measured.sum()), "per_au": per_au}


def slice_metrics(test: dict, tuned, au_ids: list[int], slice_groups: dict[str, list[str]], min_size: int,
                  unavailable: list[dict] | None = None) -> dict:
    """metrics.json's "slices": every slice with at least min_size examples measured, the others listed as too small.

    test: {"y_true", "scores"} of the split; tuned: the per-AU thresholds; slice_groups: groups(...).
    """
    y, s = np.asarray(test["y_true"]), np.asarray(test["scores"])
    measured, too_small = [], []
    for feature, values in slice_groups.items():
        arr = np.asarray(values, dtype=object)
        for value in _value_order(feature, values):
            rows = np.flatnonzero(arr == value)
            entry = {"feature": feature, "value": value, "examples": int(len(rows))}
            if len(rows) < min_size:
                too_small.append(entry)
                continue
            measured.append({**entry, **measure(y[rows], s[rows], tuned, au_ids)})
    return {"min_size": int(min_size), "note": NOTE, "measured": measured, "too_small": too_small,
            "unavailable": list(unavailable or []), "worst": worst(measured)}


def worst(measured: list[dict]) -> dict | None:
    """The measured slice with the lowest macro F1 at 0.5 (fewer examples first on a tie), or None."""
    rated = [m for m in measured if m.get("macro_f1") is not None]
    if not rated:
        return None
    w = min(rated, key=lambda m: (m["macro_f1"], m["examples"]))
    return {k: w[k] for k in ("feature", "value", "examples", "macro_f1", "macro_auc", "macro_f1_tuned")}


def macro_f1_by_slice(y_true: np.ndarray, scores: np.ndarray, slice_groups: dict[str, list[str]],
                      only: list[dict]) -> dict[tuple[str, str], float | None]:
    """Macro F1 at 0.5 of another model's scores on the slices in `only` (the live model's, for the blessing)."""
    out = {}
    for m in only:
        rows = np.flatnonzero(np.asarray(slice_groups[m["feature"]], dtype=object) == m["value"])
        d = compute_metrics(y_true[rows], scores[rows], DEFAULT_THRESHOLD)
        measured = np.array([p["positives"] > 0 and p["negatives"] > 0 for p in d["per_label"]])
        out[(m["feature"], m["value"])] = _macro(d["per_label"], "f1", measured)
    return out


def describe(entry: dict) -> str:
    """A slice for a person: "face_px <48 px (34 examples)"."""
    return f"{entry['feature']} {entry['value']} ({entry['examples']} examples)"


# --- The manifest's columns (the URL's host, --slice-by) ----------------------------------------------------------


def parse_slice_by(text: str) -> list[str]:
    """'source,photographer' -> ['source', 'photographer']."""
    return [c.strip() for c in str(text or "").split(",") if c.strip()]


def find_manifest(examples_dir: str, summary: dict) -> tuple[str | None, str]:
    """(the manifest the examples were converted from, "") or (None, why it cannot be found).

    convert records it in examples_summary.json's parameters; filter records the folder it filtered (source).
    """
    parameters = summary.get("parameters") or {}
    if not parameters.get("manifest") and (parameters.get("convert") or {}).get("parameters"):
        parameters = parameters["convert"]["parameters"]  # filter carries convert's parameters along
    seen = {examples_dir}
    while not parameters.get("manifest") and parameters.get("source") and parameters["source"] not in seen:
        source = parameters["source"]
        seen.add(source)
        try:
            parameters = ex.read_summary(source).get("parameters") or {}
        except (OSError, ValueError) as e:
            return None, f"the examples' source {source} cannot be read ({e})"
    manifest = parameters.get("manifest")
    if not manifest:
        return None, (f"{storage.join(examples_dir, ex.EXAMPLES_SUMMARY_FILE)} names no manifest (examples converted "
                      "before convert recorded it); pass evaluate --manifest")
    if not storage.exists(manifest_contract.manifest_path(manifest)):
        return None, (f"the manifest convert read, {manifest_contract.manifest_path(manifest)}, cannot be reached from "
                      "here (a path of another machine or step); pass evaluate --manifest")
    return manifest, ""


def manifest_schema(manifest: str) -> list[str]:
    """The column names of a manifest (manifest.parquet or its folder)."""
    import pyarrow.parquet as pq
    import tempfile

    path = manifest_contract.resolve_manifest(manifest)
    with tempfile.TemporaryDirectory() as tmp:
        return list(pq.read_schema(storage.local_copy(path, tmp)).names)


def resolve_column(names: list[str], wanted: str) -> str | None:
    """The manifest column a --slice-by name reads: the name itself (key, url, AU43, row, ...), else the sheet's
    column of that name ("source_site" -> "sheet:source_site"); None when the manifest has neither."""
    if wanted in names:
        return wanted
    sheet = manifest_contract.sheet_column(wanted)
    return sheet if sheet in names else None


def check_columns(manifest: str, wanted: list[str]) -> None:
    """SliceError, in the user's words, when the manifest lacks a --slice-by column."""
    names = manifest_schema(manifest)
    missing = [c for c in wanted if resolve_column(names, c) is None]
    if missing:
        fixed = [n for n in names if not manifest_contract.is_sheet_column(n)]
        kept = ", ".join(n for n in fixed if not (n.startswith("AU") and n[2:].isdigit())) + ", AU1..AU60"
        sheet = manifest_contract.sheet_columns(names)
        has = (f"the sheet's columns {', '.join(sheet)}" if sheet else
               "no other column of the sheet (a sheet without a header row, as EmotioNet ships it, has none; a "
               "manifest ingested before ingest kept them: rerun ingest)")
        raise SliceError(
            f"--slice-by {','.join(missing)}: the manifest {manifest_contract.manifest_path(manifest)} has no column "
            f"{', '.join(missing)}; it has {has}, and {kept} (contract 1). Slice by one of those columns, or drop "
            "--slice-by")


def manifest_columns(manifest: str, keys: list[str], columns: list[str]) -> dict[str, list]:
    """{column: its value for each key} from the manifest (None where a key is not in it); a column is named as
    --slice-by names it (resolve_column: "source_site" reads the sheet's "sheet:source_site")."""
    from components.common.tables import read_columns

    path = manifest_contract.resolve_manifest(manifest)
    candidates = list(dict.fromkeys(n for c in columns for n in (c, manifest_contract.sheet_column(c)) if n != "key"))
    table = read_columns(path, ["key"] + candidates, ["key"], "manifest")
    read = {c: resolve_column(table.column_names, c) for c in columns}
    missing = [c for c, r in read.items() if r is None]
    if missing:
        raise ValueError(f"manifest {path} lacks the columns {', '.join(missing)}")
    index = {k: i for i, k in enumerate(table["key"].to_pylist())}
    out = {}
    for c in columns:
        values = table[read[c]].to_pylist()
        out[c] = [values[index[k]] if k in index else None for k in keys]
    return out


def slice_png(slices: dict, overall_macro_f1: float | None) -> bytes:
    """slices.png: macro F1 at 0.5 of each measured slice (a bar each, coloured by feature), the whole split's as a
    line."""
    from components.evaluate.plots import plot_png

    rows = [m for m in slices["measured"] if m.get("macro_f1") is not None]

    def draw(ax):
        import matplotlib.pyplot as plt

        names = [f"{m['feature']}: {m['value']} (n={m['examples']})" for m in rows]
        features = list(dict.fromkeys(m["feature"] for m in rows))
        colours = plt.get_cmap("tab10")
        ax.barh(range(len(rows)), [m["macro_f1"] for m in rows],
                color=[colours(features.index(m["feature"]) % 10) for m in rows])
        ax.set_yticks(range(len(rows)), names, fontsize=7)
        ax.invert_yaxis()
        if overall_macro_f1 is not None and not math.isnan(overall_macro_f1):
            ax.axvline(overall_macro_f1, color="k", ls="--", lw=0.8, label=f"whole split {overall_macro_f1:.2f}")
            ax.legend(fontsize=7, loc="lower right")
        ax.set(xlim=(0, 1), xlabel="macro F1 at threshold 0.5",
               title=f"Macro F1 per slice (test split; slices of at least {slices['min_size']} examples)")
        if not rows:
            ax.text(0.5, 0.5, "no slice has enough examples", ha="center", va="center", transform=ax.transAxes)

    return plot_png(draw, figsize=(8, max(2.5, 0.28 * len(rows) + 1.2)), grid_axis="x")

