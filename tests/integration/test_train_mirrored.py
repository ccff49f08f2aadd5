"""The train step under tf.distribute.MirroredStrategy, on two logical CPU devices standing in for two GPUs:
the model, the optimizer (backbone learning-rate multiplier included), the masked metrics, the checkpoint,
resume and the export all go through the same code as on a multi-GPU node."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from components.train import synthetic

ROOT = Path(__file__).resolve().parents[2]

# Splits the CPU into two logical devices before TensorFlow starts, and has the train step mirror
# over them where it would mirror over the GPUs it sees; then runs the train CLI.
DRIVER = r"""
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from components.train import session


def two_replicas(mixed_precision):
    import keras

    keras.mixed_precision.set_global_policy("float32")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    return strategy, strategy.num_replicas_in_sync, "2 logical CPUs", False


session.detect_devices = two_replicas
from components.train.__main__ import main

sys.exit(main(sys.argv[1:]))
"""


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


@pytest.mark.slow
def test_training_mirrored_over_two_replicas_checkpoints_resumes_and_exports(tmp_path):
    examples = str(tmp_path / "examples")
    synthetic.write_examples(examples, {"train": 32, "validation": 16, "test": 8}, size=32, unknown_rate=0.1, shards=2)
    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    args = ["--examples", examples, "--output", str(out), "--checkpoint-dir", str(ckpt), "--backbone", "compactcnn",
            "--weights", "none", "--image-size", "32", "--batch-size", "4", "--epochs", "3", "--steps-per-epoch", "3",
            "--optimizer", "rmsprop", "--fine-tune", "full", "--backbone-lr-multiplier", "0.1"]

    # The first run is lost once it has checkpointed an epoch, as on a preempted node.
    first = _start(args)
    try:
        deadline = time.monotonic() + 300
        while not (ckpt / "state.json").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        log, _ = first.communicate()
    assert "batch 4 x 2 replica(s) on 2 logical CPUs" in log, log[-4000:]
    state = json.loads((ckpt / "state.json").read_text())
    assert 1 <= state["epoch"] < 3

    second = _start(args)
    log, _ = second.communicate(timeout=600)
    assert second.returncode == 0, log[-4000:]
    assert f"resuming after epoch {state['epoch']}" in log
    history = json.loads((out / "history.json").read_text())
    assert history["epochs"] == [1, 2, 3] and history["resumed_from_epoch"] == state["epoch"]
    assert all(np.isfinite(v).all() for v in history["metrics"].values())
    config = json.loads((out / "model_config.json").read_text())
    assert config["training"]["replicas"] == 2

    import tensorflow as tf

    from components.common import examples as ex

    records = [ex.example_to_dict(r) for r in ex.iter_examples(ex.shard_files(examples, "test"))]
    sig = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    probs = sig(image_bytes=tf.constant([r["encoded"] for r in records]))["probabilities"].numpy()
    assert probs.shape == (len(records), len(config["au_ids"])) and np.isfinite(probs).all()
