"""The model folder (contract 4): its file names, model_config.json's reader, and the serving signature's loader and runner."""
from __future__ import annotations

import json
import os

from components.common import storage
from components.common.errors import StepRefusal

# What train writes into a model folder; model_config.json last, so a folder that has it is whole.
SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "model.keras"
MODEL_CONFIG_FILE = "model_config.json"
HISTORY_FILE = "history.json"
CURVES_FILE = "training_curves.png"
LOGS_DIR = "logs"  # TensorBoard; left out of the model's digest and of what a server fetches
# The serving signature: encoded images in, one output per task out.
SIGNATURE = "serving_default"
SIGNATURE_INPUT = "image_bytes"
OUTPUT_NAMES = {"au": "probabilities", "va": "valence_arousal"}
TASKS = tuple(OUTPUT_NAMES)


class ModelError(StepRefusal):
    """A model folder that cannot be used (a file missing, unreadable or not of contract 4); the message says which."""


def read_model_config(model_dir: str) -> dict:
    """model_config.json of a model folder (local or gs://), with task and au_ids checked and normalized."""
    path = storage.join(model_dir, MODEL_CONFIG_FILE)
    if not storage.exists(path):
        raise ModelError(f"{path} is missing: {model_dir} is not a model folder written by train (contract 4)")
    try:
        config = json.loads(storage.read_text(path))
    except ValueError as e:
        raise ModelError(f"{path} is not valid JSON ({e}); re-run train") from e
    task = config.get("task", "au")
    if task not in TASKS:
        raise ModelError(f"{path}: task {task!r} is neither 'au' nor 'va'")
    if task == "au" and not config.get("au_ids"):
        raise ModelError(f"{path} has no au_ids: which AU each output column is cannot be known")
    config["task"] = task
    config["au_ids"] = [int(a) for a in config.get("au_ids") or []]
    return config


def load_signature(local_model_dir: str):
    """The `serving_default` signature of a local model folder's saved_model/."""
    import tensorflow as tf

    path = os.path.join(local_model_dir, SAVED_MODEL_DIR)
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ModelError(f"{path}/saved_model.pb is missing: {local_model_dir} has no exported SavedModel")
    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001 - TF raises many kinds; the user needs the path and the cause
        raise ModelError(f"cannot load the SavedModel at {path}: {e}") from e
    if SIGNATURE not in loaded.signatures:
        raise ModelError(f"{path} has no {SIGNATURE} signature (found {sorted(loaded.signatures)})")
    # The signature holds the loaded object's variables only while the object lives.
    signature = loaded.signatures[SIGNATURE]
    signature._loaded_model = loaded  # noqa: SLF001
    return signature


def run_signature(signature, image_bytes: list[bytes], task: str):
    """The signature's output for a batch of encoded images: an (N, K) or (N, 2) NumPy array."""
    import tensorflow as tf

    out = signature(**{SIGNATURE_INPUT: tf.constant(image_bytes, dtype=tf.string)})
    key = OUTPUT_NAMES["va" if task == "va" else "au"]
    if key not in out:
        raise ModelError(f"the model's {SIGNATURE} returns {sorted(out)}, not {key!r} (contract 4)")
    return out[key].numpy()
