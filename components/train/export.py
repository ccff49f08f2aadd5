"""Writes contract 4 (components.common.model): a SavedModel serving encoded image bytes, model.keras,
model_config.json, history.json, curves; and the end of a run, which exports its best weights there."""
from __future__ import annotations

import datetime
import json
import os
import platform
import time

from components.common import storage
from components.common.faces import FaceSettings
from components.common.model import (CURVES_FILE, HISTORY_FILE, KERAS_FILE, MODEL_CONFIG_FILE, OUTPUT_NAMES,
                                     SAVED_MODEL_DIR, SIGNATURE, SIGNATURE_INPUT)
from components.train import data
from components.train import model as model_lib
from components.train.plan import Plan, log
from components.train.session import Session


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


def local_folder(plan: Plan, workdir: str) -> str:
    """Where the model folder is written during the run (TensorBoard's logs/ from the first epoch): the output folder
    itself, or for gs:// a folder in workdir that export_run copies there at the end."""
    out_dir = os.path.join(workdir, "model") if storage.is_gcs(plan.output_dir) else plan.output_dir
    os.makedirs(out_dir, exist_ok=True)
    return out_dir


def versions() -> dict:
    import keras
    import numpy
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
    }


def model_config(p: Plan, run_facts: dict) -> dict:
    """model_config.json: what evaluate, predict and push need to use the model, and how it was trained."""
    head = OUTPUT_NAMES[p.task]
    return {
        "task": p.task,
        "backbone": p.spec.name,
        "image_size": p.image_size,
        "au_ids": p.au_ids if p.task == "au" else [],
        "outputs": {
            "name": head,
            "size": p.num_outputs,
            "activation": "sigmoid" if p.task == "au" else "linear",
            "labels": [f"AU{a}" for a in p.au_ids] if p.task == "au" else ["valence", "arousal"],
        },
        "threshold": 0.5 if p.task == "au" else None,
        # What a new image goes through before the signature (components.common.facefinder.crop.prepare): the
        # settings convert cut the training images with, so predict and any server do the same.
        "faces": FaceSettings.from_dict((p.summary.get("parameters") or {}).get("faces")).to_dict(),
        "signature": {"name": SIGNATURE, "input": SIGNATURE_INPUT, "output": head},
        "preprocessing": {
            "decode": "tf.io.decode_image(channels=3, expand_animations=False): JPEG, PNG, GIF (first frame) "
            "or BMP; not WebP",
            "resize": f"bilinear with antialiasing to {p.image_size}x{p.image_size}, aspect ratio not kept",
            "model_input": "RGB float32 in 0..255, [N, image_size, image_size, 3]",
            "backbone_preprocessing": f"{p.spec.preprocessing} (inside the model)",
        },
        "training": {
            "examples": p.examples_dir,
            "weights": p.weights,
            "fine_tune": str(p.fine_tune),
            "epochs": p.epochs,
            "head_epochs": p.head_epochs or None,
            "batch_size_per_replica": p.batch_per_replica,
            "optimizer": p.optimizer,
            "learning_rate": p.learning_rate,
            "lr_decay": p.lr_decay,
            "lr_decay_epochs": p.lr_decay_epochs,
            "backbone_lr_multiplier": p.backbone_lr_multiplier if p.fine_tune.policy in ("full", "two-stage") else None,
            "l2": p.l2,
            "dropout": p.dropout,
            "bn_momentum": p.bn_momentum,
            "augment": p.augment,
            "seed": p.seed,
            "train_examples": p.n_train,
            "validation_examples": p.n_val,
            **run_facts,
        },
        # What the model card says of the training data (push sees the model, not the examples folder).
        "data": {k: p.summary.get(k) for k in ("au_ids", "policy", "splits", "counters", "parameters")},
        "versions": versions(),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def export_run(net, plan: Plan, session: Session, store, state: dict, out_dir: str, *, pos_weight, resumed_from: int,
               started: float) -> dict:
    """Exports the best epoch's weights (the last epoch's without validation) as contract 4 to the plan's output
    folder, then drops the run's checkpoints. Returns the run's summary (logic.run's result)."""
    import keras

    if store.load_best(net, state):
        log(f"best validation loss {state['best']:.4f} at epoch {state['best_epoch']}: exporting those weights")
    keras.mixed_precision.set_global_policy("float32")
    # A float32 twin without optimizer, regularisers or compile state: model.keras loads with
    # plain Keras and the SavedModel runs on a CPU as well as a GPU.
    export_model = model_lib.build_model(
        plan.spec, task=plan.task, num_outputs=plan.num_outputs, image_size=plan.image_size, weights=None,
        dropout=plan.dropout, l2=0.0, bn_momentum=plan.bn_momentum,
    )
    copy_weights(net, export_model)
    train_seconds = round(time.time() - started, 1)
    history_doc = {
        "epochs": state["epochs"],
        "stages": state["stages"],
        "metrics": state["history"],
        "best_epoch": state["best_epoch"] or None,
        "best_val_loss": state["best"],
        "stopped_early": state["stopped_early"],
        "resumed_from_epoch": resumed_from or None,
    }
    run_facts = {
        "epochs_run": len(state["epochs"]),
        "best_epoch": state["best_epoch"] or None,
        "stopped_early": state["stopped_early"],
        "global_batch_size": session.global_batch,
        "replicas": session.replicas,
        "device": session.device,
        "mixed_precision": session.mixed_precision,
        "pos_weight": pos_weight,
        "pos_weight_mode": plan.pos_weight,
        "train_seconds": train_seconds,
    }
    write_model_folder(
        export_model, out_dir, image_size=plan.image_size, task=plan.task,
        config=model_config(plan, run_facts), history_doc=history_doc,
    )
    if storage.is_gcs(plan.output_dir):  # written in workdir (local_folder)
        storage.copy_tree(out_dir, plan.output_dir)
    store.delete_all(state)
    log(f"model written to {plan.output_dir} after {len(state['epochs'])} epochs ({train_seconds:.0f} s)")
    return {
        "output_dir": plan.output_dir,
        "epochs_run": len(state["epochs"]),
        "best_epoch": state["best_epoch"] or None,
        "stopped_early": state["stopped_early"],
        "resumed_from_epoch": resumed_from,
        "history": history_doc,
        "train_seconds": train_seconds,
        "image_size": plan.image_size,
        "au_ids": plan.au_ids,
    }
