"""Resumable training state: a checkpoint every epoch, early stopping on validation loss, and the run's history.

A step restarted on a preempted node finds state.json in the checkpoint folder (local or
gs://) and continues at the next epoch with the weights, optimizer, learning-rate
schedule position, history and early-stopping counters it had.
"""
from __future__ import annotations

import json
import math
import os

import keras
import numpy as np

from components.common import storage

STATE_FILE = "state.json"


def _finite(value):
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def new_state(fingerprint: dict) -> dict:
    """The state of a run that has not trained yet; fingerprint names the settings a resume must match."""
    return {
        "fingerprint": fingerprint,
        "epoch": 0,  # epochs completed
        "stage": 1,
        "history": {},
        "epochs": [],
        "stages": [],
        "best": None,  # best validation loss so far
        "best_epoch": 0,
        "best_weights": None,
        "wait": 0,
        "stopped_early": False,
        "weights": None,
        "attempts": 0,
    }


def check_fingerprint(state: dict, fingerprint: dict, checkpoint_dir: str) -> None:
    """Refuses to resume a checkpoint written for another model, naming what differs."""
    old = state.get("fingerprint", {})
    diff = [f"{k}: checkpoint {old.get(k)!r}, now {v!r}" for k, v in fingerprint.items() if old.get(k) != v]
    if diff:
        raise ValueError(
            f"the checkpoint in {checkpoint_dir} was written by a run with other settings ({'; '.join(diff)}); "
            "rerun with the same settings to resume, or delete that folder (or pass another --checkpoint-dir) "
            "to start afresh"
        )


class Store:
    """The checkpoint folder, local or gs://: files are written whole, then state.json names them (written last)."""

    def __init__(self, checkpoint_dir: str, workdir: str):
        self.dir = checkpoint_dir
        self.remote = storage.is_gcs(checkpoint_dir)
        # gs:// files pass through a local folder: Keras and NumPy write local files.
        self._local = os.path.join(workdir, "checkpoints") if self.remote else checkpoint_dir
        os.makedirs(self._local, exist_ok=True)

    def local_path(self, name: str) -> str:
        return os.path.join(self._local, name)

    def publish(self, name: str) -> None:
        if self.remote:
            storage.upload_file(self.local_path(name), storage.join(self.dir, name))
            os.unlink(self.local_path(name))

    def fetch(self, name: str) -> str:
        if self.remote:
            storage.download_file(storage.join(self.dir, name), self.local_path(name))
        return self.local_path(name)

    def delete(self, name: str | None) -> None:
        if name:
            storage.delete(storage.join(self.dir, name))

    def load_state(self) -> dict | None:
        """The state a previous attempt left here, or None."""
        path = storage.join(self.dir, STATE_FILE)
        if not storage.exists(path):
            return None
        try:
            return json.loads(storage.read_text(path))
        except (ValueError, OSError) as e:
            raise ValueError(
                f"{path} is unreadable ({e}); delete the checkpoint folder {self.dir} to start training afresh"
            ) from e

    def save_state(self, state: dict) -> None:
        storage.write_text(storage.join(self.dir, STATE_FILE), json.dumps(state, indent=1))

    def restore(self, model, state: dict) -> None:
        """Loads the last checkpoint's weights and optimizer state into a compiled model."""
        path = self.fetch(state["weights"])
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(path)

    def load_best(self, model, state: dict) -> bool:
        """Puts the best epoch's weights into model; False when there are none (no validation)."""
        if not state.get("best_weights"):
            return False
        with np.load(self.fetch(state["best_weights"])) as data:
            model.set_weights([data[f"w{i}"] for i in range(len(data.files))])
        return True

    def delete_all(self, state: dict | None) -> None:
        """Removes what this run checkpointed (once the model is exported)."""
        for name in (STATE_FILE, (state or {}).get("weights"), (state or {}).get("best_weights")):
            self.delete(name)
        if not self.remote and os.path.isdir(self.dir) and not os.listdir(self.dir):
            os.rmdir(self.dir)


class TrainingState(keras.callbacks.Callback):
    """Each epoch: history, best weights, early stopping, then a checkpoint and state.json (written last)."""

    def __init__(self, store: Store, state: dict, *, stage: int, patience: int, early_stopping: bool):
        super().__init__()
        self.store = store
        self.state = state
        self.stage = stage
        self.patience = int(patience)
        self.early_stopping = early_stopping

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        st = self.state
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(lr)))
        n = len(st["epochs"])
        for k in sorted(set(st["history"]) | set(logs)):
            values = st["history"].setdefault(k, [])
            values.extend([None] * (n - len(values)))  # a metric that appeared late (stage 2)
            values.append(_finite(logs.get(k)))
        st["epochs"].append(epoch + 1)
        st["stages"].append(self.stage)

        old_weights, old_best = st.get("weights"), st.get("best_weights")
        val_loss = _finite(logs.get("val_loss"))
        new_best = None
        if val_loss is not None and (st["best"] is None or val_loss < st["best"]):
            st["best"], st["best_epoch"], st["wait"] = val_loss, epoch + 1, 0
            new_best = f"best-epoch-{epoch + 1:04d}.npz"
            path = self.store.local_path(new_best)
            with open(path, "wb") as f:
                np.savez(f, **{f"w{i}": w for i, w in enumerate(self.model.get_weights())})
            self.store.publish(new_best)
            st["best_weights"] = new_best
        elif val_loss is not None:
            st["wait"] += 1
        if self.early_stopping and val_loss is not None and st["wait"] >= self.patience:
            st["stopped_early"] = True
            self.model.stop_training = True

        name = f"epoch-{epoch + 1:04d}.weights.h5"
        self.model.save_weights(self.store.local_path(name), overwrite=True)
        self.store.publish(name)
        st["weights"], st["epoch"], st["stage"] = name, epoch + 1, self.stage
        self.store.save_state(st)
        # Only now that state.json names the new files are the old ones dropped.
        if old_weights and old_weights != name:
            self.store.delete(old_weights)
        if new_best and old_best and old_best != new_best:
            self.store.delete(old_best)
