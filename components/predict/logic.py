"""The predict step: every face of images and videos (files, folders, globs) scored by a trained or pushed model."""
from __future__ import annotations

import glob
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass

from components.common import inference, labels, storage
from components.common import faces as contract
from components.predict import rows as table
from components.predict import video as videos

MISSING = "missing"  # a path, folder or glob that names no file
UNREADABLE = "unreadable"  # a file the operating system (or Cloud Storage) refuses to read
# A file this big is no photograph (a 100-megapixel JPEG is ~30 MB): refused before it is read into memory.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
NOT_SCORED = (MISSING, UNREADABLE, *inference.ERROR_REASONS, videos.NOT_VIDEO)


class PredictError(Exception):
    """Nothing can be predicted (an unusable model, bad arguments); the message says which and what to do."""


@dataclass(frozen=True)
class Input:
    """One file to score, or a path the user gave that names none (error set)."""

    name: str
    kind: str  # "image", "video" or "" (error)
    error: str | None = None
    reason: str | None = None


def _walk(folder: str) -> list[str]:
    """Every file under a local folder, sorted, hidden files and folders left out."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return out


def _file(name: str) -> Input:
    return Input(name, "video" if videos.is_video(name) else "image")


def expand(specs: list[str]) -> list[Input]:
    """The files that files, folders (walked), globs (`**` too) and gs:// files or prefixes name, in order;
    a spec that names none is an Input with its error."""
    out: list[Input] = []
    for spec in specs:
        if storage.is_gcs(spec):
            found = [spec] if storage.exists(spec) else sorted(storage.list_files(spec.rstrip("/") + "/"))
            missing = f"{spec} does not exist (no object and no folder of that name); check the path"
        elif os.path.isdir(spec):
            found, missing = _walk(spec), f"{spec} is an empty folder: no image or video in it"
        elif os.path.lexists(spec):
            found, missing = [spec], ""
        elif glob.has_magic(spec):
            found = []
            for match in sorted(glob.glob(spec, recursive=True)):
                found.extend(_walk(match) if os.path.isdir(match) else [match])
            missing = f"{spec} matches no file; check the pattern (quote it so the shell does not expand it)"
        else:
            found, missing = [], f"{spec} does not exist; check the path"
        out.extend(_file(f) for f in found)
        if not found:
            out.append(Input(spec, "", missing, MISSING))
    return out


def read_image(name: str) -> tuple[bytes | None, dict | None]:
    """(the bytes of an image file, None), or (None, its result saying why it cannot be read)."""
    try:
        if not storage.is_gcs(name) and os.path.getsize(name) > MAX_IMAGE_BYTES:
            return None, _bad(name, inference.TOO_LARGE, f"{name} is {os.path.getsize(name) / 2**20:.0f} MB, more "
                                                          "than any photograph; pass a smaller image")
        return storage.read_bytes(name), None
    except OSError as e:
        why = e.strerror or type(e).__name__
        return None, _bad(name, UNREADABLE, f"{name} cannot be read ({why}); check that it is a file you may read")
    except Exception as e:  # noqa: BLE001 - Cloud Storage's errors: the user needs the object and the cause
        return None, _bad(name, UNREADABLE, f"{name} cannot be read ({getattr(e, 'message', e)}); check the "
                                            "object and your access to it")


def _bad(name: str, reason: str, message: str) -> dict:
    return {"image": name, "width": 0, "height": 0, "faces": [], "faces_found": 0, "error": message,
            "reason": reason}


@dataclass
class Outputs:
    """Where rows go: `path` (.csv or .parquet; "-" is CSV on stdout) or, for a video without one, a
    <video>.au.csv of its own in `folder`; `plots` beside them."""

    path: str | None = None
    folder: str = "."

    def video_paths(self, name: str, several: bool, used: set) -> tuple[str | None, str]:
        """(rows file of its own or None when rows go to `path`, its plot's path)."""
        stem = os.path.splitext(os.path.basename(name.rstrip("/")))[0] or "video"
        if self.path and self.path != "-":
            base = os.path.splitext(self.path)[0]
            plot = f"{base}.{stem}.png" if several else f"{base}.png"
            return None, _unique(plot, used)
        rows_path = _unique(os.path.join(self.folder, f"{stem}.au.csv"), used) if self.path is None else None
        plot = _unique(os.path.join(self.folder, f"{stem}.au.png"), used)
        return rows_path, plot


def _unique(path: str, used: set) -> str:
    base, ext = os.path.splitext(path)
    n, out = 1, path
    while out in used:
        n += 1
        out = f"{base}-{n}{ext}"
    used.add(out)
    return out


def _local_video(name: str, workdir: str) -> str:
    if not storage.is_gcs(name):
        return name
    local = os.path.join(workdir, os.path.basename(name))
    storage.download_file(name, local)
    return local


def run(scorer: inference.Scorer, inputs: list[Input], *, outputs: Outputs | None = None, every: int = 1,
        fps: float = 0.0, keep: bool = True, on_image=None, on_video=None, progress_write=None) -> dict:
    """Scores every input with the scorer: images scorer.chunk files a call (several of the model's batches, so the
    scorer's threads find faces while the model runs), videos frame batch by batch.

    outputs: where rows go (None: no image rows; a video still gets its own rows file and plot).
    keep: the image results are kept in the returned result (False for a large folder streamed to a file).
    on_image(result) / on_video(summary): called as each is done (the console's lines).
    """
    outputs = outputs or Outputs()
    result = {**scorer.describe(), "images": [], "videos": [], "counts": {}}
    cols = table.columns(scorer.task, scorer.au_ids)
    writer = table.RowWriter(outputs.path, cols) if outputs.path else None
    reasons: Counter = Counter()
    counts = {"images": 0, "images_scored": 0, "faces": 0, "videos": 0, "frames_sampled": 0, "video_faces": 0}
    several = sum(i.kind == "video" for i in inputs) > 1
    used: set = set()

    def done_image(r: dict) -> None:
        counts["images"] += 1
        if r["error"] is None and r["faces"]:
            counts["images_scored"] += 1
            counts["faces"] += len(r["faces"])
        if r.get("reason"):
            reasons[r["reason"]] += 1
        if writer is not None:
            writer.write(table.result_rows(r, scorer.task, scorer.au_ids))
        if keep:
            result["images"].append(r)
        if on_image is not None:
            on_image(r)

    try:
        # An image's bytes, or the result of one that could not be read: results keep the order given.
        pending: list[tuple[bytes | None, str, dict | None]] = []

        def score_pending() -> None:
            scored = iter(scorer.score([d for d, _, bad in pending if bad is None],
                                       [n for _, n, bad in pending if bad is None]))
            for _, _, bad in pending:
                done_image(bad if bad is not None else next(scored))
            pending.clear()

        for item in inputs:
            if item.kind != "video":
                if item.error is not None:
                    pending.append((None, item.name, _bad(item.name, item.reason, item.error)))
                else:
                    data, bad = read_image(item.name)
                    pending.append((data, item.name, bad))
                if sum(bad is None for _, _, bad in pending) >= scorer.chunk:
                    score_pending()
                continue
            if pending:  # the images before it first
                score_pending()
            summary = _video(scorer, item.name, outputs, writer, several, used, every, fps, progress_write)
            counts["videos"] += 1
            counts["frames_sampled"] += summary["sampled"]
            counts["video_faces"] += summary["face_ids"]
            if summary["reason"]:
                reasons[summary["reason"]] += 1
            result["videos"].append(summary)
            if on_video is not None:
                on_video(summary)
        if pending:
            score_pending()
    finally:
        if writer is not None:
            writer.close()
    counts["reasons"] = dict(sorted(reasons.items()))
    counts["errors"] = sum(n for r, n in reasons.items() if r in NOT_SCORED)
    counts["inputs"] = counts["images"] + counts["videos"]
    result["counts"] = counts
    result["rows"] = outputs.path if outputs.path and outputs.path != "-" else None
    return result


def _video(scorer, name, outputs, writer, several, used, every, fps, progress_write) -> dict:
    rows_path, plot_path = outputs.video_paths(name, several, used)
    with tempfile.TemporaryDirectory(prefix="predict-") as workdir:
        try:
            local = _local_video(name, workdir)
            open(local, "rb").close()  # OpenCV says only "cannot open"; the system says why
        except OSError as e:
            return {"video": name, "sampled": 0, "face_ids": 0, "rows": None, "plot": None, "reason": UNREADABLE,
                    "error": f"{name} cannot be read ({e.strerror or e}); check that it is a file you may read"}
        own = table.RowWriter(rows_path, writer.columns if writer else table.columns(scorer.task, scorer.au_ids)) \
            if rows_path else None
        try:
            summary = videos.score_video(scorer, local, name, own or writer, every=every, fps=fps,
                                         plot_path=plot_path, progress_write=progress_write)
        finally:
            if own is not None:
                own.close()
    if own is not None and summary["reason"] == videos.NOT_VIDEO:
        os.remove(rows_path)  # a header alone: nothing was read
        summary["rows"] = None
    return summary


def predict(model_uri: str, inputs: list[str], threshold: float | None = None, which_faces: str = "all",
            batch_size: int = 32, **kwargs) -> dict:
    """Loads the model (a registry root following LATEST, a version or a model folder) and scores the inputs
    (files, folders, globs); returns the JSON-able result. Raises PredictError when the model cannot be used."""
    try:
        scorer = inference.Scorer(model_uri, which_faces=which_faces, batch_size=batch_size, threshold=threshold)
    except inference.ModelError as e:
        raise PredictError(str(e)) from e
    return run(scorer, expand(inputs), **kwargs)


# -- the console ---------------------------------------------------------------------------------------------

def describe_model(result: dict) -> str:
    where = result["model"] + (f" (version {result['version']})" if result.get("version") else "")
    lines = [f"model: {where}"]
    faces = result["faces"]
    if faces["mode"] == "crop":
        lines.append(f"faces: {result['which_faces']}, each cropped as the model's training faces "
                     f"({faces['size']} px, margin {faces['margin']}); no face: {faces['no_face']}")
    else:
        lines.append("faces: the whole picture (the model was trained on whole pictures)")
    if result["task"] == "au":
        lines.append(f"active = probability >= threshold; thresholds: {result['threshold_source']}")
    return "\n".join(lines)


def format_image(r: dict, task: str, thresholds: dict) -> str:
    """An image's lines: each face's box and score, then its AU probabilities ('*' marks the active ones)."""
    if r["error"] is not None:
        return f"{r['image']}\n  not scored: {r['error']}"
    n = len(r["faces"])
    head = f"{r['image']}  {r['width']}x{r['height']}"
    if not n:
        why = {contract.NO_FACE: "no face found", contract.TINY_FACE: "only faces too small to use"}.get(
            r.get("reason") or "", "no face")
        return (f"{head}: {why} (the model was trained on face crops only, so nothing is scored); "
                "pass a picture with a visible face")
    found = r.get("faces_found", n)
    more = f" ({found} found)" if found > n else ""
    lines = [f"{head}: {n} face{'s' if n > 1 else ''}{more}"]
    for face in r["faces"]:
        x, y, w, h = face["box"]
        if face["status"] == contract.CROPPED:
            lines.append(f"  face {face['face']}: box x {x:.0f} y {y:.0f} w {w:.0f} h {h:.0f}, score "
                         f"{face['score']:.2f}, turned {face['angle']:+.1f} deg")
        else:
            lines.append(f"  face {face['face']}: the whole picture"
                         + (" (no face found)" if face["status"] == contract.NO_FACE_WHOLE else ""))
        if task == "va":
            lines.append("    " + "  ".join(f"{k} {face[k]:+.3f}" for k in labels.VA_COLUMNS))
            continue
        names = {k: labels.AU_NAMES.get(int(k[2:]), "") for k in face["probabilities"]}
        width = max(len(v) for v in names.values()) if names else 0
        for k, p in face["probabilities"].items():
            mark = "*" if k in face["active"] else " "
            lines.append(f"   {mark} {k:<5} {names[k]:<{width}}  {p:.3f}  (thr {thresholds[k]:.2f})")
        lines.append(f"    active: {', '.join(face['active']) or 'none'}")
    return "\n".join(lines)


def format_video(s: dict) -> str:
    if s.get("reason") in (videos.NOT_VIDEO, UNREADABLE):
        return f"{s['video']}\n  not scored: {s['error']}"
    lines = [f"{s['video']}  {s['width']}x{s['height']}, {s['fps']:g} fps: {s['frames']} frames, "
             f"{s['sampled']} sampled, a face in {s['with_face']}, {s['face_ids']} face id(s)"]
    where = [f"rows: {s['rows']}"] if s.get("rows") and s["rows"] != "-" else []
    if s.get("plot"):
        where.append(f"plot: {s['plot']}")
    if where:
        lines.append("  " + "; ".join(where))
    if s.get("active_share"):
        lines.append("  active share of the face rows: "
                     + ", ".join(f"{k} {v:.0%}" for k, v in s["active_share"].items()))
    for key in ("warning", "error"):
        if s.get(key):
            lines.append(f"  {s[key]}")
    return "\n".join(lines)


def format_counts(counts: dict) -> str:
    """The last line: what was scored, and each input not scored, by reason."""
    parts = [f"{counts['images']} image{'s' if counts['images'] != 1 else ''} "
             f"({counts['images_scored']} with faces scored, {counts['faces']} faces)"]
    if counts["videos"]:
        parts.append(f"{counts['videos']} video{'s' if counts['videos'] != 1 else ''} "
                     f"({counts['frames_sampled']} frames sampled)")
    line = "predict: " + ", ".join(parts)
    if counts["reasons"]:
        line += "; not scored or without a face: " + ", ".join(f"{r} {n}" for r, n in counts["reasons"].items())
    return line


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2)
