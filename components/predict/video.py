"""A video through the scorer: sampled frames in batches, face ids kept by box overlap, rows, and a plot over time."""
from __future__ import annotations

import math
import os
import queue
import threading
from array import array
from dataclasses import dataclass, field

from components.common import faces as contract
from components.common import inference
from components.common.progress import Progress
from components.predict import rows as table

# What OpenCV's FFmpeg reads; anything else is treated as an image.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".webm", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv")
NOT_VIDEO = "not_video"  # OpenCV cannot open it or read a frame: truncated, damaged, or a codec it lacks
MIN_IOU = 0.3  # boxes overlapping this much in consecutive sampled frames are the same face
MAX_GAP = 15  # sampled frames a face may be unseen (turned away, occluded) and keep its id
# Decoded frames held at once, in pixels (~150 MB of RGB): the batch being scored and the frames read ahead while it
# is, half each: 12 frames of 1080p, 3 of 4K, at most the scorer's chunk.
BATCH_PIXELS = 50_000_000


def is_video(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def iou(a: list[float], b: list[float]) -> float:
    """Intersection over union of two [x, y, width, height] boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Tracker:
    """Face ids across frames: each face takes the id of the best-overlapping face of the recent frames
    (greedily, highest overlap first), or a new one. Faces barely move between sampled frames, so overlap is
    enough; a face unseen for more than max_gap sampled frames loses its id."""

    min_iou: float = MIN_IOU
    max_gap: int = MAX_GAP
    _tracks: dict = field(default_factory=dict)  # id -> (last box, sampled frame it was last seen in)
    _step: int = 0
    next_id: int = 0

    def assign(self, boxes: list[list[float]]) -> list[int]:
        self._step += 1
        self._tracks = {i: t for i, t in self._tracks.items() if self._step - t[1] <= self.max_gap}
        pairs = sorted(((iou(box, t[0]), f, i) for f, box in enumerate(boxes) for i, t in self._tracks.items()),
                       reverse=True)
        ids: list[int | None] = [None] * len(boxes)
        taken = set()
        for overlap, f, i in pairs:
            if overlap < self.min_iou:
                break
            if ids[f] is None and i not in taken:
                ids[f] = i
                taken.add(i)
        for f, box in enumerate(boxes):
            if ids[f] is None:
                ids[f] = self.next_id
                self.next_id += 1
            self._tracks[ids[f]] = (box, self._step)
        return ids


def sample_step(video_fps: float, every: int, fps: float) -> float:
    """Frames between two sampled frames: `every`, or the video's rate over the rate asked for (--fps)."""
    if fps and fps > 0 and video_fps and video_fps > 0:
        return max(1.0, video_fps / fps)
    return float(max(1, int(every)))


@dataclass
class Curves:
    """Each AU's probability of the largest face per sampled frame (NaN without a face), kept as float32
    arrays for the plot: 4 bytes a frame and AU, so an hour at 30 fps with 12 AUs is about 5 MB."""

    series: list[str]
    times: array = field(default_factory=lambda: array("d"))
    values: dict = field(default_factory=dict)

    def __post_init__(self):
        self.values = {s: array("f") for s in self.series}

    def add(self, t: float, face: dict | None) -> None:
        self.times.append(t)
        for s in self.series:
            v = None if face is None else (face["probabilities"].get(s) if s.startswith("AU") else face.get(s))
            self.values[s].append(math.nan if v is None else float(v))


def plot(curves: Curves, thresholds: dict, title: str, path: str) -> str:
    """A PNG: one panel per AU (or valence and arousal), its probability over time, the threshold dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves.series)
    fig, axes = plt.subplots(n, 1, figsize=(10, 0.9 * n + 1.2), sharex=True, squeeze=False)
    for ax, s in zip(axes[:, 0], curves.series):
        ax.plot(curves.times, curves.values[s], lw=1)
        if s in thresholds:
            ax.axhline(thresholds[s], color="grey", ls="--", lw=0.8)
        ax.set_ylim(0, 1) if s.startswith("AU") else ax.set_ylim(-1, 1)
        ax.set_ylabel(s, rotation=0, ha="right", va="center")
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("time (s)")
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    if os.path.dirname(os.path.abspath(path)):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def score_video(scorer: inference.Scorer, path: str, name: str, writer: table.RowWriter, *, every: int = 1,
                fps: float = 0.0, plot_path: str | None = None, progress_write=None) -> dict:
    """Scores the sampled frames of the local video at `path` (named `name` in rows and messages), writing rows
    as each batch is scored; returns its summary (error and reason set when it cannot be read or has no face)."""
    import cv2

    summary = {"video": name, "width": 0, "height": 0, "fps": 0.0, "frames": 0, "sampled": 0, "with_face": 0,
               "face_ids": 0, "rows": writer.path, "plot": None, "active_share": {}, "error": None, "reason": None,
               "warning": None}
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            return _unreadable(summary, name)
        video_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        summary.update(fps=round(video_fps, 3), width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
                       height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0))
        step = sample_step(video_fps, every, fps)
        frame_pixels = max(1, summary["width"] * summary["height"])
        batch_frames = max(1, min(scorer.chunk, BATCH_PIXELS // 2 // frame_pixels))
        series = list(scorer.thresholds) if scorer.task == "au" else ["valence", "arousal"]
        curves, tracker = Curves(series), Tracker()
        active = {s: 0 for s in scorer.thresholds}
        face_rows = 0
        progress = Progress("predict", total, f"frames of {os.path.basename(name)}", write=progress_write) \
            if total > 0 and progress_write is not None else None
        batch: list[tuple[int, float]] = []
        frames: list = []
        reader = _Reader(cap, video_fps, step, batch_frames, progress)

        def flush():
            nonlocal face_rows
            results = scorer.score_frames(frames, [f"{name} frame {i}" for i, _ in batch])
            out = []
            for (i, t), result in zip(batch, results):
                ids = tracker.assign([f["box"] for f in result["faces"]])
                out.extend(table.result_rows(result, scorer.task, scorer.au_ids, frame=i, timestamp=t, face_ids=ids,
                                             file=name))
                summary["with_face"] += bool(result["faces"])
                face_rows += len(result["faces"])
                for face in result["faces"]:
                    for s in face["active"]:
                        active[s] += 1
                curves.add(t, result["faces"][0] if result["faces"] else None)
            writer.write(out)
            summary["sampled"] += len(batch)
            batch.clear()
            frames.clear()

        try:
            for i, t, rgb in reader:
                batch.append((i, t))
                frames.append(rgb)
                if len(batch) >= batch_frames:
                    flush()
            if batch:
                flush()
        finally:
            reader.stop()
        if progress is not None:
            progress.close()
        index = reader.index
        summary["frames"] = index
    finally:
        cap.release()
    if summary["sampled"] == 0:
        return _unreadable(summary, name)
    summary["face_ids"] = tracker.next_id
    summary["active_share"] = {s: round(n / face_rows, 4) for s, n in active.items()} if face_rows else {}
    if total and index < total * 0.95:
        summary["warning"] = (f"{name} ended after {index} of the {total} frames its header announces: it may be "
                              "truncated; the frames read are scored")
    if plot_path and summary["with_face"]:
        what = "AU probabilities" if scorer.task == "au" else "valence and arousal"
        summary["plot"] = plot(curves, scorer.thresholds,
                               f"{os.path.basename(name)}: {what} of the largest face of each frame", plot_path)
    if summary["with_face"] == 0:
        summary.update(reason=contract.NO_FACE,
                       error=f"no face found in any of the {summary['sampled']} sampled frames of {name}; check that "
                             "faces are visible, frontal and not tiny, or sample more frames (--every 1)")
    return summary


class _Reader:
    """Reads a video's sampled frames (RGB) in a thread of its own, up to `ahead` frames ahead of the scorer: OpenCV
    decodes while the scorer's threads find faces and the model runs. Iterate it for (frame number, time, RGB);
    index is the frames gone through once it ends (skipped frames are grabbed, not decoded)."""

    _END = object()

    def __init__(self, cap, video_fps: float, step: float, ahead: int, progress=None):
        self._cap, self._fps, self._step, self._progress = cap, video_fps, step, progress
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stopping = threading.Event()
        self.index = 0
        self._thread = threading.Thread(target=self._read, name="video-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import cv2

        cap, next_sample = self._cap, 0.0
        try:
            while not self._stopping.is_set():
                if self.index + 1e-9 >= next_sample:
                    ok, bgr = cap.read()
                    if not ok:
                        break
                    t = self.index / self._fps if self._fps > 0 else cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                    self._put((self.index, t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
                    next_sample += self._step
                elif not cap.grab():  # skipped frames are not decoded
                    break
                self.index += 1
                if self._progress is not None:
                    self._progress.set(self.index)
        except BaseException as e:  # noqa: BLE001 - raised again in the scoring thread
            self._put(e)
        finally:
            self._put(self._END)

    def _put(self, item) -> None:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        """Stops reading (the scorer failed, or the video ended) and waits for the thread: the capture is then free
        to release."""
        self._stopping.set()
        self._thread.join()


def _unreadable(summary: dict, name: str) -> dict:
    summary.update(reason=NOT_VIDEO, error=(
        f"{name} cannot be read as a video: OpenCV's FFmpeg opened no frame of it (truncated, damaged, or a codec "
        f"it lacks); check that it plays, or re-encode it (ffmpeg -i {os.path.basename(name)} out.mp4)"))
    return summary
