"""End to end: the pipeline's own defaults (the recipe for real photos: ResNet-50 at 224 px from ImageNet weights,
AdamW, batch 64) run every step on a real sheet, here a small demo set served on loopback and given as --source.

No internet here: the ImageNet weights are stood in for by a weights file of the same network made locally (random
values), passed as --weights FILE, which is how a cluster without internet runs it (a file baked into the GPU image,
or gs://). One epoch of about 40 faces is a single step of the default batch: the plumbing is under test, not the
model. ResNet-50 on a CPU is slow: 8.9 minutes on a 2-core VM that other jobs kept busy (train 232 s, evaluate 95 s,
push 50 s); its limit is 20 minutes."""
import json
import os
import subprocess
import sys

import pytest

from components.train.params import SPEC as TRAIN
from pipeline.dag import STEPS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_SIZE = 60
MAKE_WEIGHTS = (
    "import sys, keras; keras.applications.ResNet50(include_top=False, weights=None, pooling='avg', "
    "input_shape=(224, 224, 3)).save_weights(sys.argv[1])"
)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_default_recipe_runs_every_step_with_a_local_weights_file(tmp_path):
    from components.common.faces import FACE_PARAMS
    from pipeline import demo

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    weights = str(tmp_path / "resnet50_notop.weights.h5")
    made = subprocess.run([sys.executable, "-c", MAKE_WEIGHTS, weights], capture_output=True, text=True, timeout=120,
                          env=env)
    assert made.returncode == 0 and os.path.isfile(weights), made.stderr[-3000:]

    demo_dir, runs = str(tmp_path / "demo"), tmp_path / "runs"
    demo.generate_demo(demo_dir, DEMO_SIZE, 0, scene="wild")
    # No faults: every URL answers, so each split gets its faces.
    with demo.DemoServer(demo_dir, faults=False, seed=0) as server:
        sheet = demo.write_sheet(demo_dir, server, str(tmp_path / "sheet.xlsx"), seed=0)
        proc = subprocess.run(
            [sys.executable, "pipeline.py", "run", "--source", sheet, "--runs-dir", str(runs),
             "--run-dir", str(runs / "real"), "--weights", weights, "--epochs", "1",
             # a one-step model of random weights is judged on the plumbing, not on its quality
             "--min-macro-f1", "0", "--min-macro-auc", "0"],
            cwd=REPO, capture_output=True, text=True, timeout=1000, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]

    summary = json.loads((runs / "real" / "run_summary.json").read_text())
    assert summary["ok"] and [s["name"] for s in summary["steps"]] == list(STEPS)
    assert all(s["status"] == "succeeded" for s in summary["steps"]), summary["steps"]
    model_root = next(p for p in (runs / "registry").iterdir() if p.is_dir())
    version = model_root / (model_root / "LATEST").read_text().strip()
    config = json.loads((version / "model_config.json").read_text())
    face_size = next(p.default for p in FACE_PARAMS if p.name == "face_size")
    # The recipe the DAG's defaults name, nothing of the demo's preset.
    assert (config["backbone"], config["image_size"], config["faces"]["size"]) == (TRAIN.defaults.backbone, 224,
                                                                                   face_size)
    training = config["training"]
    assert training["weights"] == weights and training["fine_tune"] == TRAIN.defaults.fine_tune
    assert (training["optimizer"], training["learning_rate"]) == (TRAIN.defaults.optimizer,
                                                                 TRAIN.defaults.learning_rate)
    assert training["batch_size_per_replica"] == TRAIN.defaults.batch_size
    # A pretrained backbone learns at a tenth of the head's rate (a random one would at the head's).
    assert training["backbone_lr_multiplier"] == TRAIN.defaults.backbone_lr_multiplier
    assert json.loads((version / "history.json").read_text())["epochs"] == [1]
    assert "model pushed to" in proc.stdout
