"""Writes contract 4 (components.common.model): a SavedModel serving encoded image bytes, model.keras,
model_config.json, history.json, curves."""
from __future__ import annotations

import json
import os

from components.common.model import (CURVES_FILE, HISTORY_FILE, KERAS_FILE, MODEL_CONFIG_FILE, OUTPUT_NAMES,
                                     SAVED_MODEL_DIR, SIGNATURE, SIGNATURE_INPUT)
from components.train import data


def copy_weights(src, dst) -> None:
    """Copies every weight of src into dst, a model of the same architecture, checking names and shapes."""
    sw, dw = src.weights, dst.weights
    if len(sw) != len(dw):
        raise ValueError(f"cannot copy weights: {len(sw)} in the trained model, {len(dw)} in the export model")
    for a, b in zip(sw, dw):
        if tuple(a.shape) != tuple(b.shape) or a.name != b.name:
            raise ValueError(f"cannot copy weights: {a.path} {tuple(a.shape)} vs {b.path} {tuple(b.shape)}")
        b.assign(a.value)


def export_saved_model(model, path: str, image_size: int, task: str) -> None:
    """A SavedModel whose serving_default takes image_bytes string[N] and returns probabilities or valence_arousal.

    Decoding (any format tf.io.decode_image reads), resizing and the backbone's
    preprocessing all run inside the graph, exactly as in training.
    """
    import keras
    import tensorflow as tf

    output_name = OUTPUT_NAMES[task]

    def decode(b):
        return data.decode_and_resize(b, image_size)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SIGNATURE_INPUT)])
    def serve(image_bytes):
        images = tf.map_fn(
            decode,
            image_bytes,
            fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
            parallel_iterations=16,
        )
        return {output_name: tf.cast(model(images, training=False), tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, serve)
    archive.write_out(path, verbose=False)


def plot_curves(history: dict, epochs: list[int], path: str, task: str, best_epoch: int = 0, stages=None) -> None:
    """training_curves.png: loss and AUC (au) or MAE (va) per epoch, train and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    second = ("auc", "ROC AUC (macro over AUs)") if task == "au" else ("mae", "mean absolute error")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, title) in zip(axes, [("loss", "loss"), second]):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            values = history.get(prefix + key)
            if values and any(v is not None for v in values):
                xs = [e for e, v in zip(epochs, values) if v is not None]
                ys = [v for v in values if v is not None]
                ax.plot(xs, ys, style, markersize=3, label=("validation " if prefix else "train ") + key)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        if stages and len(set(stages)) > 1:
            switch = epochs[[i for i, s in enumerate(stages) if s == 2][0]]
            ax.axvline(switch - 0.5, color="tab:red", linestyle="--", label="backbone unfrozen")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def write_model_folder(
    export_model,
    out_dir: str,
    *,
    image_size: int,
    task: str,
    config: dict,
    history_doc: dict,
) -> None:
    """Writes saved_model/, model.keras, history.json, training_curves.png, then model_config.json.

    model_config.json comes last: a folder that has it is whole.
    """
    os.makedirs(out_dir, exist_ok=True)
    export_saved_model(export_model, os.path.join(out_dir, SAVED_MODEL_DIR), image_size, task)
    export_model.save(os.path.join(out_dir, KERAS_FILE))
    write_json(os.path.join(out_dir, HISTORY_FILE), history_doc)
    plot_curves(
        history_doc["metrics"],
        history_doc["epochs"],
        os.path.join(out_dir, CURVES_FILE),
        task,
        best_epoch=history_doc.get("best_epoch") or 0,
        stages=history_doc.get("stages"),
    )
    write_json(os.path.join(out_dir, MODEL_CONFIG_FILE), config)
