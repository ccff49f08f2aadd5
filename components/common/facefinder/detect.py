"""Finds faces in an RGB image with MediaPipe's BlazeFace (its models ship inside the mediapipe wheel: nothing is downloaded), in the whole picture and, where it is large for the faces it may hold, in overlapping tiles."""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sys
import threading
import types
from dataclasses import dataclass

import numpy as np

from components.common.faces import DETECT_MAX_SIDE, SCALE_PICTURE, SCALE_TILES, FaceSettings
from components.common.facefinder import tiles as tiling


@dataclass(frozen=True)
class Face:
    """One detection, in the pixels of the image it was found in."""

    box: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax
    landmarks: np.ndarray  # (6, 2) float32: x, y of components.common.faces.LANDMARK_NAMES
    score: float
    scale: str = SCALE_PICTURE  # which pass found it: the whole picture, or a tile of it (faces.SCALES)

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    @property
    def side(self) -> float:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])

    def scaled(self, factor: float) -> "Face":
        return Face(tuple(float(v) * factor for v in self.box), self.landmarks * np.float32(factor), self.score,
                    self.scale)

    def moved(self, dx: float, dy: float, scale: str) -> "Face":
        """This face found in a tile whose corner is (dx, dy) of the picture, in the picture's pixels."""
        x0, y0, x1, y1 = self.box
        return Face((x0 + dx, y0 + dy, x1 + dx, y1 + dy), self.landmarks + np.float32([dx, dy]), self.score, scale)


@dataclass(frozen=True)
class Search:
    """What one search of a picture found: its faces, largest first, and how many tiles were searched (0: none)."""

    faces: list[Face]
    tiles: int = 0


def _import_face_detection():
    """mediapipe.python.solutions.face_detection, without mediapipe's Tasks API.

    mediapipe 0.10.14's package __init__ imports its Tasks API, whose optional_dependencies
    import TensorFlow (and genai imports JAX): ~10 s and TensorFlow's thread pools in every
    Beam worker, where a forked converter must not have them. The face solution needs none of
    it, so the Tasks packages are stood in for while mediapipe is imported.
    """
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ INFO/WARNING lines on stderr
    if "mediapipe.python.solutions.face_detection" in sys.modules:
        return sys.modules["mediapipe.python.solutions.face_detection"]
    stubs = [n for n in ("mediapipe.tasks", "mediapipe.tasks.python") if n not in sys.modules]
    for name in stubs:
        sys.modules[name] = types.ModuleType(name)
    try:
        from mediapipe.python.solutions import face_detection
    except ImportError as e:
        if "lib" in str(e) and ".so" in str(e):  # OpenCV under MediaPipe needs libGL and GLib
            raise RuntimeError(
                f"the face detector cannot load a system library ({e}); on Debian or Ubuntu: "
                "apt-get install libgl1 libglib2.0-0, or install opencv-contrib-python-headless (the same OpenCV "
                "without its GUI, as the project's Docker images do), or run with --faces whole"
            ) from e
        raise RuntimeError(
            f"the face detector needs mediapipe ({e}); install the project's requirements.lock "
            "(`make venv`) or run with --faces whole"
        ) from e
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return face_detection


class Detector:
    """BlazeFace full-range (small, distant faces), then short-range when the first finds nothing; then, in a
    picture larger than a tile, the full-range model again on overlapping tiles (tiles.tile_boxes), merged by
    non-maximum suppression.

    BlazeFace sees the whole picture squeezed into 192 px, so a face of 48 px in a 1000 px
    picture is 9 px there and mostly missed; in a tile of tiles.TILE_SIDE (384) px it is 24 px.
    tiles (tiles.TILE_POLICIES): "auto" (default) searches the tiles only where the whole
    picture gave no face of tiles.SURE_IN_VIEW px or more in its view: every tile where it gave
    none, the tile around each face where it gave only faces it finds unreliably and boxes
    loosely. That is what a step that uses the largest face needs, at no cost where a clear face
    is found (measured in benchmarks/faces.py). "always" searches every tile of every picture
    larger than one (the small faces of a group photo beside a large one); "never" none.

    One instance per process: the models load in milliseconds, but a MediaPipe graph must not
    be shared across threads or forked processes, so each worker makes its own (see get()).
    """

    def __init__(self, min_score: float = FaceSettings.min_score, max_side: int = DETECT_MAX_SIDE,
                 tiles: str = "auto", tile_side: int = tiling.TILE_SIDE):
        if tiles not in tiling.TILE_POLICIES:
            raise ValueError(f"tiles is {tiles!r}; expected one of {', '.join(tiling.TILE_POLICIES)}")
        face_detection = _import_face_detection()
        self.min_score = float(min_score)
        self.max_side = int(max_side)
        self.tiles = tiles
        self.tile_side = int(tile_side)
        self.tile_min_score = max(self.min_score, tiling.TILE_MIN_SCORE)
        self._models = [face_detection.FaceDetection(model_selection=m, min_detection_confidence=self.min_score)
                        for m in (1, 0)]
        _STARTED_IN.add(os.getpid())

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Every face found in an (H, W, 3) uint8 RGB array, largest first; [] when there is none."""
        return self.search(rgb).faces

    def search(self, rgb: np.ndarray) -> Search:
        """detect(), and how many tiles were searched: each face says which scale found it (Face.scale)."""
        h, w = rgb.shape[:2]
        scale = 1.0
        if max(h, w) > self.max_side:  # detection needs few pixels; a 6000 px photo would cost seconds
            import cv2

            scale = self.max_side / max(h, w)
            rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(rgb)
        found: list[Face] = []
        for model in self._models:
            found = self._faces(model.process(rgb).detections, rgb.shape[1], rgb.shape[0])
            if found:
                break
        searched = 0
        if self.tiles == "always" or (self.tiles == "auto" and not tiling.sure(found, rgb.shape[1], rgb.shape[0])):
            boxes = tiling.tile_boxes(rgb.shape[1], rgb.shape[0], self.tile_side)
            if found and self.tiles == "auto":  # only faces it does not see clearly: a closer look at each
                boxes = tiling.tiles_around(boxes, [f.box for f in found])
            if boxes:
                found = self._merge(found + self._tiled(rgb, boxes))
                searched = len(boxes)
        if scale != 1.0:
            found = [f.scaled(1.0 / scale) for f in found]
        return Search(sorted(found, key=lambda f: f.area, reverse=True), searched)

    def _tiled(self, rgb: np.ndarray, boxes) -> list[Face]:
        """The faces the full-range model finds in each tile at tiles.TILE_MIN_SCORE, in the picture's pixels (a
        face in a tile is small: the short-range model, for faces that fill the view, would add cost, not faces)."""
        found = []
        for x0, y0, x1, y1 in boxes:
            tile = np.ascontiguousarray(rgb[y0:y1, x0:x1])
            detections = self._models[0].process(tile).detections
            found.extend(f.moved(x0, y0, SCALE_TILES) for f in self._faces(detections, x1 - x0, y1 - y0)
                         if f.score >= self.tile_min_score)
        return found

    @staticmethod
    def _merge(found: list[Face]) -> list[Face]:
        """One face per face: the same face seen in two overlapping tiles (or in the picture and a tile) once."""
        if len(found) < 2:
            return found
        keep = tiling.nms([f.box for f in found], [f.score for f in found])
        return [found[i] for i in keep]

    def _faces(self, detections, w: int, h: int) -> list[Face]:
        out = []
        for d in detections or ():
            score = float(d.score[0]) if d.score else 0.0
            if score < self.min_score:
                continue
            rb = d.location_data.relative_bounding_box
            x0, y0 = max(0.0, rb.xmin * w), max(0.0, rb.ymin * h)
            x1, y1 = min(float(w), (rb.xmin + rb.width) * w), min(float(h), (rb.ymin + rb.height) * h)
            if x1 <= x0 or y1 <= y0:
                continue
            points = np.array([[k.x * w, k.y * h] for k in d.location_data.relative_keypoints], np.float32)
            if points.shape != (6, 2):
                continue
            out.append(Face((x0, y0, x1, y1), points, score))
        return out

    def close(self) -> None:
        for m in self._models:
            m.close()
        self._models = []


_DETECTORS: dict[tuple[int, float, int, str], Detector] = {}
# The processes that made a Detector (get()'s, or a scorer's threads' own): MediaPipe graphs were started there.
_STARTED_IN: set[int] = set()


def running_here() -> bool:
    """Whether this process has started a MediaPipe graph: a child forked from it then hangs in MediaPipe's own
    threads (measured: the child's first detection never returns), so a caller about to fork must not."""
    return os.getpid() in _STARTED_IN


def get(min_score: float = FaceSettings.min_score, max_side: int = DETECT_MAX_SIDE, tiles: str = "auto") -> Detector:
    """This process's detector for these settings, made on first use (a forked child makes its own); tiles: when
    it also searches overlapping tiles (Detector)."""
    key = (os.getpid(), float(min_score), int(max_side), str(tiles))
    if key not in _DETECTORS:
        _DETECTORS[key] = make(min_score, max_side, tiles)
    return _DETECTORS[key]


def make(min_score: float = FaceSettings.min_score, max_side: int = DETECT_MAX_SIDE, tiles: str = "auto") -> Detector:
    """A new detector, for a thread of its own (get() shares one per process); refused in a process forked from one
    that had started the face detector."""
    if any(p != os.getpid() for p in _STARTED_IN):
        raise RuntimeError(
            "this process was forked from one that had started the face detector, and MediaPipe hangs in such "
            "a child; fork before the first detection, or use the spawn start method"
        )
    return Detector(min_score, max_side, tiles)


_GREY = np.full((64, 64, 3), 128, np.uint8)  # no face: a run of every model of the detector


class Threads:
    """`workers` threads that find faces, each with a detector of its own (a MediaPipe graph must not be shared
    between threads; decoding and detection release the GIL, so they use every core). With warm (default) every
    thread is started at once and its detector made, so no caller meets a slow first detection.

    The scorer (components.common.inference) finds faces in them; benchmarks/predict.py measures the detector alone
    in them. quiet: a context manager around making a detector and its first run (inference.library_noise keeps
    TFLite's banners off the console).
    """

    def __init__(self, workers: int, min_score: float = FaceSettings.min_score, quiet=contextlib.nullcontext,
                 warm: bool = True):
        self._min_score, self._quiet = float(min_score), quiet
        self._local = threading.local()
        self.pool = concurrent.futures.ThreadPoolExecutor(int(workers), thread_name_prefix="faces")
        if not warm:
            return
        # The first tasks wait for one another: none is free to take a second, so each submit starts a thread.
        barrier = threading.Barrier(int(workers))

        def start() -> None:
            barrier.wait(timeout=120)
            self.detector()

        try:
            for future in [self.pool.submit(start) for _ in range(int(workers))]:
                future.result()
        except BaseException:
            self.pool.shutdown(wait=False)
            raise

    def detector(self) -> Detector:
        """The calling thread's own detector, made on its first call."""
        detector = getattr(self._local, "detector", None)
        if detector is None:
            # MediaPipe opens a graph's calculators in threads of its own after the constructor returns, and they
            # write TFLite's and MediaPipe's banners to stderr from there: one run of the graph waits for them, so
            # making the detector and its first run share one quiet window (a window closed before those threads
            # wrote let a banner, or half of one, through while another thread's window was open).
            with self._quiet():
                detector = make(self._min_score)
                detector.detect(_GREY)
            self._local.detector = detector
        return detector

    def shutdown(self) -> None:
        """Stops the threads once their work is done; their detectors go with them."""
        self.pool.shutdown(wait=True)
