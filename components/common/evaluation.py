"""The evaluation folder (contract 5): its file names and the readers of metrics.json and blessing.json."""
from __future__ import annotations

import json

from components.common import storage
from components.common.errors import StepRefusal

METRICS_FILE = "metrics.json"
# An AU is active at or above this probability where no threshold was tuned for it (metrics.json's "thresholds"
# "default"): evaluate's figures "at_default", and the scorer's flags with a model pushed without tuned ones.
DEFAULT_THRESHOLD = 0.5
BLESSING_FILE = "blessing.json"  # written last: its presence means the folder is whole
EVALUATION_REPORT_FILE = "report.md"
ROC_FILE = "roc.png"
PR_FILE = "pr.png"
VA_FILE = "va.png"
SLICES_FILE = "slices.png"  # macro F1 per slice (metrics.json's "slices")
# A few test-split faces (their encoded bytes, keys) and a picture without a face, with what the shared scorer
# (components.common.inference) answered for each: push's infra validation sends them to the candidate's server.
CANONICAL_REQUESTS_FILE = "canonical_requests.json"
NO_FACE_KEY = "no-face.png"  # the canonical picture without a face
# The test faces the model got most wrong, per AU and in the worst slices, with base64 JPEG thumbnails of the crops
# (components.evaluate.errors; the run report's gallery). Kept out of the registry: they are pictures of people.
ERRORS_FILE = "errors.json"
FALSE_POSITIVE = "false_positives"  # the highest probabilities where the label is 0
FALSE_NEGATIVE = "false_negatives"  # the lowest probabilities where the label is 1
ERRORS_PER_KIND = 4  # per AU, of each kind
ERRORS_SLICES = 3  # the worst measured slices shown
ERRORS_PER_SLICE = 4
ERROR_THUMBNAIL_PX = 64


def no_face_png() -> bytes:
    """A flat grey picture: no face in it, so an answer to it must say so (the contract's no-face path)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 96), (128, 128, 128)).save(buf, "PNG")
    return buf.getvalue()

# The evaluation files a registry version carries beside the model (push copies those present).
EVALUATION_FILES = (METRICS_FILE, BLESSING_FILE, EVALUATION_REPORT_FILE, ROC_FILE, PR_FILE, VA_FILE, SLICES_FILE)


class EvaluationError(StepRefusal):
    """An evaluation folder whose file is missing or unreadable; the message says which and what to do."""


def _read_json(evaluation_dir: str, name: str) -> dict:
    path = storage.join(evaluation_dir, name)
    if not storage.exists(path):
        raise EvaluationError(f"{path} is missing: {evaluation_dir} is not an evaluation folder written by evaluate")
    try:
        return json.loads(storage.read_text(path))
    except ValueError as e:
        raise EvaluationError(f"{path} is not valid JSON ({e}); re-run evaluate") from e


def read_blessing(evaluation_dir: str) -> dict:
    """blessing.json of an evaluation folder (local or gs://), checked to hold a true/false `blessed`."""
    blessing = _read_json(evaluation_dir, BLESSING_FILE)
    if not isinstance(blessing, dict) or not isinstance(blessing.get("blessed"), bool):
        raise EvaluationError(f"{storage.join(evaluation_dir, BLESSING_FILE)} has no true/false 'blessed'; re-run evaluate")
    return blessing


def read_metrics(evaluation_dir: str) -> dict:
    """metrics.json of an evaluation folder, or of a registry version, which carries it (local or gs://)."""
    return _read_json(evaluation_dir, METRICS_FILE)


def read_errors(evaluation_dir: str) -> dict:
    """errors.json of an evaluation folder, or {} where the folder has none (a valence/arousal model, an older run)."""
    if not storage.exists(storage.join(evaluation_dir, ERRORS_FILE)):
        return {}
    return _read_json(evaluation_dir, ERRORS_FILE)
