"""The train CLI, killed mid-run and restarted, resumes from its gs:// checkpoint (a Cloud Storage emulator)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.common import storage
from components.train import synthetic

from gcs_emulator import gcs_emulator

BUCKET = "au-train"
ROOT = Path(__file__).resolve().parents[2]


def _cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "components.train", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_killed_run_resumes_from_its_gcs_checkpoint(tmp_path):
    examples = str(tmp_path / "examples")
    synthetic.write_examples(examples, {"train": 32, "validation": 8, "test": 8}, size=32)
    with gcs_emulator(BUCKET):
        from components.train import backbones

        # The backbone's starting weights come from gs:// too.
        backbone = backbones.build(backbones.get("compactcnn"), 32, None)
        local_weights = str(tmp_path / "start.weights.h5")
        backbone.save_weights(local_weights)
        storage.upload_file(local_weights, f"gs://{BUCKET}/weights/start.weights.h5")

        ckpt = f"gs://{BUCKET}/checkpoints/run-1"
        out = f"gs://{BUCKET}/models/run-1"
        args = ["--examples", examples, "--output", out, "--checkpoint-dir", ckpt,
                "--weights", f"gs://{BUCKET}/weights/start.weights.h5", "--backbone", "compactcnn",
                "--image-size", "32", "--batch-size", "8", "--epochs", "5", "--steps-per-epoch", "12",
                "--optimizer", "adam", "--fine-tune", "full"]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

        first = _cli(args, env)
        try:
            assert _wait_for(lambda: storage.exists(f"{ckpt}/state.json"), first, timeout=240), first.communicate()[0]
        finally:
            first.send_signal(signal.SIGKILL)  # the node is gone: no clean-up runs
            first.communicate()
        state = json.loads(storage.read_text(f"{ckpt}/state.json"))
        assert 1 <= state["epoch"] < 5
        assert storage.exists(f"{ckpt}/{state['weights']}")
        assert not storage.exists(f"{out}/model_config.json")

        second = _cli(args, env)
        log, _ = second.communicate(timeout=300)
        assert second.returncode == 0, log
        assert f"resuming after epoch {state['epoch']}" in log

        history = json.loads(storage.read_text(f"{out}/history.json"))
        assert history["epochs"] == [1, 2, 3, 4, 5]
        assert history["resumed_from_epoch"] == state["epoch"]
        config = json.loads(storage.read_text(f"{out}/model_config.json"))
        assert config["training"]["weights"].startswith("gs://")
        assert storage.exists(f"{out}/saved_model/saved_model.pb")
        assert not list(storage.list_files(ckpt))  # checkpoints go once the model is exported
