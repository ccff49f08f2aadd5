"""The shared scorer (predict, serve, annotate): a model on images or video frames, every face's AU probabilities.

Interface kept stable for its users: Scorer(model_uri, which_faces=, batch_size=, threshold=, workers=) with
.version, .model_dir, .config, .au_ids, .thresholds; score(images, names) and score_frames(rgb_arrays, names), one
dict per picture {"image", "width", "height", "faces": [{"face", "box": [x, y, w, h], "landmarks", "score", "angle",
"probabilities", "active"}], "error", "reason"}; warmup(); close(). A bad picture never raises: its error says what
to do.

How a call is spent: each picture is decoded, searched for faces and its faces cropped in one of `workers` threads
(each with its own face detector: a MediaPipe graph must not be shared; decoding, detection and TensorFlow all
release the GIL, so the threads use every core), while the calling thread runs the model on each batch_size faces
as soon as they are cropped. A call of several batches' pictures therefore keeps the model and the detectors busy
at once (predict passes Scorer.chunk pictures a call).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings

import numpy as np

from components.common import faces as contract
from components.common import evaluation, imaging, labels, machine, model, registry, storage

# Why an image was not scored: the "reason" of a result whose "error" says what to do.
NOT_IMAGE = "not_image"  # bytes no image decoder recognises (text, a video, an empty file)
CORRUPT = "corrupt"  # an image format whose data is truncated or damaged
TOO_LARGE = "too_large"  # more than MAX_PIXELS pixels: decoding it would take gigabytes
TOO_SMALL = contract.TOO_SMALL  # shorter side below contract.MIN_IMAGE_SIDE px: no face fits in it
MODEL_FAILED = "model_failed"  # the model raised on this image's input
ERROR_REASONS = (NOT_IMAGE, CORRUPT, TOO_LARGE, TOO_SMALL, MODEL_FAILED)
# Why an image that is fine has no faces (its "error" stays None): contract.NO_FACE or contract.TINY_FACE.

WHICH_FACES = ("all", "largest")
# 64 million pixels (8000 x 8000) decode to ~200 MB of RGB; Pillow itself warns at ~89 million.
MAX_PIXELS = 64_000_000
# convert's JPEG quality (re-encoded images, face crops): the model sees a crop as compressed as its training crops.
JPEG_QUALITY = imaging.JPEG_QUALITY
DEFAULT_THRESHOLD = evaluation.DEFAULT_THRESHOLD  # the threshold of a model pushed without tuned ones
# The face-finding threads of a scorer by default: every core this process may use, up to this many (each holds a
# detector, ~20 MB; beyond 8 the model, on one thread's batches, is the bound).
MAX_WORKERS = 8
# Pictures a call to score() is best given, in batches: enough for the detectors to work ahead while the model runs.
CHUNK_BATCHES = 4


# A model URI that cannot be scored with (also a registry without LATEST); the message says what to do.
ModelError = model.ModelError


def au_key(au: int) -> str:
    """The name of an AU in results: AU1, AU12 (the "labels" of model_config.json's outputs)."""
    return f"AU{int(au)}"


# Lines TensorFlow, TFLite and MediaPipe write straight to the stderr file descriptor while they load, whatever
# the log level (some at ERROR level, e.g. the CUDA plugin registrations of a CPU-only run): never a fault of
# the user's, so library_noise() drops them and replays every other line.
_NOISE = re.compile(
    r"Unable to register cu(FFT|DNN|BLAS) factory|TF-TRT Warning|This TensorFlow binary is optimized"
    r"|rebuild TensorFlow with the appropriate compiler flags|oneDNN custom operations are on"
    r"|Created TensorFlow Lite XNNPACK delegate|All log messages before absl::InitializeLog"
    r"|Feedback manager requires a model with a single signature|Could not find cuda drivers"
    r"|failed call to cuInit|Skipping registering GPU devices|NUMA node|computation placer already registered"
    r"|gl_context|GL version|OpenGL|Attempting to fetch value instead of handling error"
)
_quiet = False  # set by quiet_libraries()
# The stderr descriptor is the process's: one redirection at a time (loads in several threads of a Beam worker or
# a server wait here), and a nested use inside it changes nothing.
_noise_lock = threading.RLock()
_noise_depth = 0


@contextlib.contextmanager
def library_noise():
    """Around loading TensorFlow, the model or the face detector: their banners are dropped and any other line they
    write to stderr (a real error) is shown, after quiet_libraries(); does nothing otherwise."""
    global _noise_depth
    if not _quiet:
        yield
        return
    with _noise_lock:
        if _noise_depth:
            _noise_depth += 1
            try:
                yield
            finally:
                _noise_depth -= 1
            return
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            _noise_depth = 1
            try:
                yield
            finally:
                _noise_depth = 0
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                for line in captured.read().decode("utf-8", "replace").splitlines():
                    if line.strip() and not _NOISE.search(line):
                        print(line, file=sys.stderr)


def quiet_libraries(verbose: bool = False) -> None:
    """Keeps TensorFlow, TFLite/MediaPipe, absl, protobuf and google-api-core banners and warnings off the console.

    Call it before TensorFlow or MediaPipe is imported (their C++ logging reads the environment
    once). Errors still show: TF_CPP_MIN_LOG_LEVEL 2 hides INFO and WARNING only, and only
    Python warnings of those libraries are filtered. verbose=True leaves everything as it is.
    """
    global _quiet
    if verbose:
        return
    _quiet = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's and TFLite's C++ INFO and WARNING lines
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    # FFmpeg's own lines ("moov atom not found"): a video that cannot be read gets predict's message instead.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    for module in ("google", "google.api_core", "google.auth", "google.protobuf", "tensorflow", "keras", "absl",
                   "mediapipe", "tf_keras"):
        warnings.filterwarnings("ignore", module=module + r"(\..*)?$")
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*Python version.*")
    warnings.filterwarnings("ignore", message=r".*(protobuf|Protobuf|SymbolDatabase|RepeatedCompositeContainer).*")
    import logging

    for name in ("tensorflow", "absl", "h5py", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
        absl_logging.set_stderrthreshold("error")
    except ImportError:  # absl comes with TensorFlow; without it there is nothing to quiet
        pass


def import_tensorflow():
    """TensorFlow, imported without the Keras it loads eagerly: a SavedModel's signature needs no Keras, and
    TensorFlow 2.16's `import keras.src.optimizers` (all of Keras) is most of its import time (measured: 25 s
    of a 2-core machine's start-up cut to 8). Keras still imports normally afterwards, when asked for."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    stub = "keras" not in sys.modules
    if stub:
        sys.modules["keras.src.optimizers"] = None  # TensorFlow's __init__ catches the ImportError this raises
    try:
        with library_noise():
            import tensorflow as tf
    finally:
        if stub and sys.modules.get("keras.src.optimizers", 0) is None:
            del sys.modules["keras.src.optimizers"]
    return tf


def read_thresholds(model_dir: str, au_ids: list[int], override: float | None = None) -> tuple[dict, str]:
    """({"AU1": t, ...}, where they came from): the per-AU thresholds tuned on validation that push stores in
    metrics.json beside the model, one given threshold for all, or DEFAULT_THRESHOLD when there are none."""
    if override is not None:
        if not 0.0 <= float(override) <= 1.0:
            raise ModelError(f"threshold {override} is not a probability; give one between 0 and 1")
        return {au_key(a): float(override) for a in au_ids}, f"{float(override)} for every AU (given)"
    path = storage.join(model_dir, evaluation.METRICS_FILE)
    tuned = {}
    if storage.exists(path):
        try:
            tuned = (json.loads(storage.read_text(path)).get("thresholds") or {}).get("tuned") or {}
        except (ValueError, AttributeError):
            tuned = {}
    if au_ids and all(str(a) in tuned for a in au_ids):
        return ({au_key(a): float(tuned[str(a)]) for a in au_ids},
                f"per AU, tuned on the validation split ({evaluation.METRICS_FILE})")
    return ({au_key(a): DEFAULT_THRESHOLD for a in au_ids},
            f"{DEFAULT_THRESHOLD} for every AU (no tuned thresholds with the model)")


def _error(name: str, width: int, height: int, reason: str, message: str) -> dict:
    return {"image": name, "width": width, "height": height, "faces": [], "faces_found": 0, "error": message,
            "reason": reason}


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def decode(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray | None, dict | None]:
    """(H x W x 3 uint8 RGB, None) of an image's bytes, turned upright by its EXIF orientation; or (None, the
    result of an image that cannot be scored, with its error and reason). Never raises on bad bytes."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return None, _error(name, 0, 0, NOT_IMAGE, f"{name} is empty (0 bytes); pass an image file (JPEG, PNG, "
                            "...)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            im = Image.open(io.BytesIO(data))
            width, height = imaging.upright_size(*im.size, imaging.upright_transpose(im))
    except Image.DecompressionBombError as e:
        return None, _error(name, 0, 0, TOO_LARGE, f"{name} is too large to decode ({e}); shrink it below "
                            f"{max_pixels // 1_000_000} megapixels and pass it again")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        why = "no image format recognised" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        return None, _error(name, 0, 0, NOT_IMAGE, f"{name} is not an image that can be read ({why}); pass a JPEG, "
                            "PNG, GIF, WebP, BMP or TIFF file, or a video (mp4, avi, mov, webm)")
    if width * height > max_pixels:
        return None, _error(name, width, height, TOO_LARGE,
                            f"{name} is {width}x{height} ({width * height / 1e6:.0f} megapixels), over the "
                            f"{max_pixels // 1_000_000}-megapixel limit; shrink it (a face needs far fewer pixels) "
                            "and pass it again")
    if min(width, height) < contract.MIN_IMAGE_SIDE:
        return None, _error(name, width, height, TOO_SMALL,
                            f"{name} is {width}x{height} px: too small to hold a face (the shorter side must be at "
                            f"least {contract.MIN_IMAGE_SIDE} px); pass a bigger picture")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            rgb_image, _ = imaging.decode_rgb(data)  # upright, as convert decoded the training pictures
    except imaging.UndecodableImage as e:
        return None, _error(name, width, height, CORRUPT,
                            f"{name} is a damaged or truncated image ({e}); copy or download it again")
    return np.asarray(rgb_image), None


class Scorer:
    """A model loaded once; score() and score_frames() find each picture's faces as convert did for the model's
    training images (model_config.json's "faces"), batch them through the model and return JSON-able results.

    model_uri: a model folder (train's output), a registry version folder, or a registry model root
    (<destination>/<model_name>, whose LATEST is followed; or the destination with model_name=);
    local or gs://. Raises ModelError when it is none of these. Within a call, `workers` threads
    find the faces (default: every core this process may use, at most MAX_WORKERS; 1 in a
    process that shares its cores with others, as a Beam worker does). Calls may come from
    several threads at once (a server's batches in flight): they share the threads, each picture
    found by a thread's own detector. close() stops the threads; a Scorer no longer referenced
    stops them too.
    """

    def __init__(self, model_uri: str, *, which_faces: str = "all", batch_size: int = 32,
                 threshold: float | None = None, model_name: str | None = None, workers: int | None = None):
        if which_faces not in WHICH_FACES:
            raise ValueError(f"which_faces is {which_faces!r}; expected one of {', '.join(WHICH_FACES)}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size is {batch_size}; expected 1 or more")
        if workers is not None and int(workers) < 1:
            raise ValueError(f"workers is {workers}; expected 1 or more (or None: every core)")
        self.which_faces, self.batch_size = which_faces, int(batch_size)
        self.workers = int(workers) if workers is not None else min(MAX_WORKERS, machine.local_cores())
        # Pictures a call is best given: CHUNK_BATCHES batches, so detection runs ahead of the model.
        self.chunk = self.batch_size * CHUNK_BATCHES
        self._lock = threading.Lock()
        self._threads = None  # facefinder.detect.Threads: the face-finding threads, started on first use
        uri = registry.model_root(model_uri, model_name) if model_name else model_uri
        try:
            self.model_dir, self.version = registry.resolve_model(uri)
        except registry.RegistryError as e:
            raise ModelError(str(e)) from e
        self._load(threshold)

    def _load(self, threshold: float | None) -> None:
        workdir = tempfile.mkdtemp(prefix="scorer-") if storage.is_gcs(self.model_dir) else None
        try:
            local = registry.fetch_local(self.model_dir, workdir) if workdir else self.model_dir
            self.config = model.read_model_config(local)
            import_tensorflow()
            with library_noise():
                self._signature = model.load_signature(local)
        finally:
            if workdir:  # the loaded SavedModel holds its variables in memory
                shutil.rmtree(workdir, ignore_errors=True)
        self.task = self.config["task"]
        self.au_ids = list(self.config["au_ids"])
        try:
            self.settings = contract.FaceSettings.from_dict(self.config.get("faces"))
        except (TypeError, ValueError) as e:
            raise ModelError(f"{storage.join(self.model_dir, model.MODEL_CONFIG_FILE)}: its faces settings cannot be "
                             f"used ({e}); re-run train") from e
        if self.task == "au":
            self.thresholds, self.threshold_source = read_thresholds(self.model_dir, self.au_ids, threshold)
        else:
            self.thresholds, self.threshold_source = {}, ""

    def describe(self) -> dict:
        """What the results were made with: model, version, task, AUs, thresholds and face settings."""
        return {"model": self.model_dir, "version": self.version, "task": self.task, "au_ids": self.au_ids,
                "thresholds": self.thresholds, "threshold_source": self.threshold_source,
                "faces": self.settings.to_dict(), "which_faces": self.which_faces}

    def warmup(self) -> None:
        """Starts the face-finding threads, each detector run once, and runs the model once, so the first real
        request is not the slow one."""
        with self._lock:
            self._face_threads()
            with library_noise():
                self._run([_jpeg(np.full((64, 64, 3), 128, np.uint8))])

    def close(self) -> None:
        """Stops the face-finding threads (their detectors go with them), once no call is running. A later call
        starts them again."""
        with self._lock:
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown()

    def score(self, images: list[bytes], names: list[str]) -> list[dict]:
        """One result per image's bytes (see the module's contract); a bad image's result has error and reason."""
        if len(images) != len(names):
            raise ValueError(f"{len(images)} images but {len(names)} names")
        return self._score([(data, name) for data, name in zip(images, names)], decoded=False)

    def score_frames(self, rgb_arrays, names: list[str]) -> list[dict]:
        """score() for decoded pictures (video frames): H x W x 3 uint8 RGB arrays."""
        rgb_arrays = list(rgb_arrays)
        if len(rgb_arrays) != len(names):
            raise ValueError(f"{len(rgb_arrays)} frames but {len(names)} names")
        return self._score(list(zip(rgb_arrays, names)), decoded=True)

    # -- the work --------------------------------------------------------------------------------------------

    def _face_threads(self):
        """The face-finding threads (facefinder.detect.Threads), started when first asked for; the caller holds the
        lock. A model of whole pictures finds no faces: its threads start no detector."""
        if self._threads is None:
            from components.common.facefinder import detect

            self._threads = detect.Threads(self.workers, self.settings.min_score, quiet=library_noise,
                                           warm=self.settings.mode == "crop")
        return self._threads

    def _score(self, items: list, decoded: bool) -> list[dict]:
        """Each picture prepared (decoded, its faces found and cropped) in the threads, in order; the model run on
        each batch_size faces as they come, while the threads go on with the pictures after them."""
        results: list[dict] = []
        pending: list[tuple[int, int, bytes]] = []  # (result index, face index, the model's input)
        if not items:
            return results
        with self._lock:  # started once, by one caller
            threads = self._face_threads()
        prepared = threads.pool.map(lambda item: self._prepare(*item, decoded, threads), items)
        for result, crops in prepared:
            pending.extend((len(results), i, crop) for i, crop in enumerate(crops))
            results.append(result)
            while len(pending) >= self.batch_size:  # a picture of several faces may fill more than one
                self._score_batch(pending[:self.batch_size], results)
                del pending[:self.batch_size]
        if pending:
            self._score_batch(pending, results)
        return results

    def _prepare(self, data, name: str, decoded: bool, threads) -> tuple[dict, list[bytes]]:
        """One picture's result (faces without scores yet) and each face's input to the model; in one of `threads`."""
        rgb, bad = _frame(data, name) if decoded else decode(data, name)
        if bad is not None:
            return bad, []
        # A picture's own bytes go to a whole-picture model as convert passed them (a frame has none).
        return self._faces(rgb, name, None if decoded else data, threads)

    def _score_batch(self, batch: list[tuple[int, int, bytes]], results: list[dict]) -> None:
        """The model on one batch of faces (at most batch_size), each output filled into its face. When the batch
        fails, each face is run alone, so one bad input fails only its own image (_run_alone records why)."""
        try:
            outputs = list(self._run([jpeg for _, _, jpeg in batch]))
        except Exception:  # noqa: BLE001 - TF's errors vary; each input is retried alone
            outputs = [self._run_alone(item, results) for item in batch]
        for (index, face, _), out in zip(batch, outputs):
            if results[index]["error"] is None:  # else the model failed on it: _run_alone recorded why
                self._fill(results[index]["faces"][face], out)

    def _faces(self, rgb: np.ndarray, name: str, data: bytes | None, threads) -> tuple[dict, list[bytes]]:
        """The result of one decoded picture (faces without scores yet) and the model's input of each face."""
        h, w = rgb.shape[:2]
        result = {"image": name, "width": int(w), "height": int(h), "faces": [], "faces_found": 0, "error": None,
                  "reason": None}
        settings = self.settings
        if settings.mode == "whole":
            return self._whole(result, rgb, data, contract.WHOLE)
        found = threads.detector().detect(rgb)  # this thread's own
        result["faces_found"] = len(found)
        usable = [f for f in found if f.side >= contract.MIN_FACE_SIDE]
        if self.which_faces == "largest":
            usable = usable[:1]
        if not usable:
            result["reason"] = contract.TINY_FACE if found else contract.NO_FACE
            if settings.no_face == "whole":  # the model was trained on such whole pictures too
                return self._whole(result, rgb, data, contract.NO_FACE_WHOLE)
            return result, []
        from components.common.facefinder import align

        crops = []
        for i, face in enumerate(usable):
            crop, angle = align.align_crop(rgb, face, int(settings.size), float(settings.margin))
            x0, y0, x1, y1 = (float(v) for v in face.box)
            result["faces"].append({
                "face": i, "status": contract.CROPPED,
                "box": [round(x0, 1), round(y0, 1), round(x1 - x0, 1), round(y1 - y0, 1)],
                "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in face.landmarks],
                "score": round(float(face.score), 4), "angle": round(float(angle), 2)})
            crops.append(_jpeg(crop))
        return result, crops

    def _whole(self, result: dict, rgb: np.ndarray, data: bytes | None, status: str) -> tuple[dict, list[bytes]]:
        """The whole picture as the one "face": what a model trained on whole pictures saw."""
        result["faces"].append({"face": 0, "status": status, "box": [0.0, 0.0, float(result["width"]),
                                                                     float(result["height"])],
                                "landmarks": [], "score": None, "angle": 0.0})
        jpeg = None
        if data is not None:
            try:  # convert passed an upright RGB JPEG through byte for byte: the model saw exactly those bytes
                converted = imaging.to_rgb_jpeg(data, 0, JPEG_QUALITY)
                if (converted.width, converted.height) == (result["width"], result["height"]):
                    jpeg = converted.jpeg
            except imaging.UndecodableImage:
                jpeg = None
        return result, [jpeg if jpeg is not None else _jpeg(rgb)]

    def _fill(self, face: dict, out) -> None:
        values = [float(v) for v in np.asarray(out).reshape(-1)]
        if self.task == "va":
            face.update({name: round(v, 4) for name, v in zip(labels.VA_COLUMNS, values)})
            face["probabilities"], face["active"] = {}, []
            return
        probs = {au_key(a): round(p, 4) for a, p in zip(self.au_ids, values)}
        face["probabilities"] = probs
        face["active"] = [k for k, p in probs.items() if p >= self.thresholds[k]]

    def _run(self, jpegs: list[bytes]) -> np.ndarray:
        return model.run_signature(self._signature, jpegs, self.task)

    def _run_alone(self, item: tuple[int, int, bytes], results: list[dict]):
        """The model's output for one input, or None when it fails (its image's result then carries the error)."""
        index, _, jpeg = item
        try:
            return self._run([jpeg])[0]
        except Exception as e:  # noqa: BLE001 - reported on the image's result, never raised
            result = results[index]
            message = getattr(e, "message", None) or str(e)
            result.update(faces=[], reason=MODEL_FAILED,
                          error=f"the model could not score {result['image']} ({type(e).__name__}: "
                                f"{message.strip().splitlines()[0] if message.strip() else ''}); "
                                "check that the model folder is complete, or report the image")
            return None


def _frame(rgb, name: str) -> tuple[np.ndarray | None, dict | None]:
    """A decoded frame checked to be H x W x 3 uint8 of a usable size (as decode() checks bytes)."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3:
        return None, _error(name, 0, 0, NOT_IMAGE, f"{name} is an array of shape {a.shape}, not an H x W x 3 RGB "
                                                   "picture; pass RGB frames (OpenCV gives BGR: convert them)")
    h, w = a.shape[:2]
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    if h * w > MAX_PIXELS:
        return None, _error(name, w, h, TOO_LARGE, f"{name} is {w}x{h}, over {MAX_PIXELS // 1_000_000} megapixels; "
                                                   "shrink the frames")
    if min(h, w) < contract.MIN_IMAGE_SIDE:
        return None, _error(name, w, h, TOO_SMALL, f"{name} is {w}x{h} px: too small to hold a face (the shorter "
                                                   f"side must be at least {contract.MIN_IMAGE_SIDE} px)")
    return np.ascontiguousarray(a), None
