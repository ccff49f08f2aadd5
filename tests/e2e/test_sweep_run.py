"""End to end: `python pipeline.py sweep` on a tiny demo set runs the data steps once, trains and evaluates each grid
point (a failing one recorded as failed, the others going on), writes the comparison and the loss curves, and pushes
only the best run."""
import json
import os
import subprocess
import sys

import pytest

from components.common import registry
from components.common.params import MODEL_NAME
from pipeline import defaults
from pipeline.sweep.compare import LOSS_CURVES, SWEEP_JSON, SWEEP_MD
from pipeline.sweep.dag import DATA_STEPS, POINT_STEPS
from pipeline.dag import STEPS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_a_sweep_runs_the_data_steps_once_then_each_point_and_pushes_only_the_best(tmp_path):
    # three points: two train; the third's learning rate is refused by train at once, and the sweep goes on
    runs, sweep_dir = tmp_path / "runs", tmp_path / "runs" / "sweep"
    proc = subprocess.run(
        [sys.executable, "pipeline.py", "sweep", "--runs-dir", str(runs), "--run-dir", str(sweep_dir),
         # 120 scenes and one epoch: the plumbing is under test, not the models (about 2 minutes on 2 cores)
         "--preset", "demo", "--demo-size", "120", "--epochs", "1", "--min-macro-f1", "0", "--min-macro-auc", "0",
         "--grid", "learning_rate=0.002,-1,0.001"],
        cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    out = proc.stdout
    assert proc.returncode == 1, out[-6000:] + proc.stderr[-3000:]
    assert "the sweep did not finish every run: failed points: 02-learning_rate=-1.0" in proc.stderr

    # the data steps ran once: one line as each ended, one log each, in the sweep's data folder only
    lines = out.splitlines()
    for step in DATA_STEPS:
        assert sum(line.startswith(f"{step:<16} succeeded") for line in lines) == 1, step
        assert (sweep_dir / defaults.SWEEP_DATA_DIR / "logs" / f"{step}.log").stat().st_size > 0
    for step in POINT_STEPS:
        assert sum(line.startswith(f"{step:<16} succeeded") for line in lines) == 2, step
    assert sum(line.startswith(f"{'train':<16} failed") for line in lines) == 1
    points = sorted(p for p in sweep_dir.iterdir() if p.name[:2].isdigit())
    assert [p.name for p in points] == ["01-learning_rate=0.002", "02-learning_rate=-1.0", "03-learning_rate=0.001"]
    failed = points.pop(1)
    assert "expected a positive number" in (failed / "logs" / "train.log").read_text()
    for p in points:
        assert sorted(os.listdir(p / "logs")) == ["evaluate.log", "train.log"]
        summary = json.loads((p / "run_summary.json").read_text())
        assert [s["name"] for s in summary["steps"]] == list(STEPS)  # each point reads as a whole run...
        assert (p / "report.html").is_file()
        assert {s["log"] for s in summary["steps"] if s["name"] in DATA_STEPS} == {  # ...on the shared data
            str(sweep_dir / defaults.SWEEP_DATA_DIR / "logs" / f"{s}.log") for s in DATA_STEPS}

    # the comparison: one row per run with the study's measures, the loss curves of both in one plot
    record = json.loads((sweep_dir / SWEEP_JSON).read_text())
    assert [p["status"] for p in record["points"]] == ["succeeded", "failed", "succeeded"]
    bad = record["points"].pop(1)
    assert bad["log"] == str(failed / "logs" / "train.log") and "step train failed" in bad["error"]
    for p in record["points"]:
        assert set(p["measures"]) >= {"accuracy", "partial_accuracy", "precision", "recall", "f1", "auc", "tp", "fp",
                                      "tn", "fn"}
        assert len(p["loss"]) == len(p["val_loss"]) == 1 and p["seconds"]["train"] > 0
    best = next(p for p in record["points"] if p["name"] == record["best"])
    assert best["measures"]["f1"] >= max(p["measures"]["f1"] for p in record["points"])
    md = (sweep_dir / SWEEP_MD).read_text()
    assert f"{record['best']} (best)" in md and "| F1 |" in md
    assert "| 02-learning_rate=-1.0 | -1.0 | failed |" in md and "03-learning_rate=0.001" in md
    assert (sweep_dir / LOSS_CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"best: {record['best']}, by macro F1 at threshold 0.5" in out

    # only the best was pushed
    model_root = runs / "registry" / MODEL_NAME.default
    versions = [v for v in model_root.iterdir() if v.is_dir()]
    assert len(versions) == 1
    (pushed,) = record["pushed"]
    assert pushed["name"] == record["best"] and pushed["pushed"] and pushed["version"] == versions[0].name
    assert (model_root / "LATEST").read_text().strip() == versions[0].name
    marker = json.loads((versions[0] / registry.PUSH_FILE).read_text())
    assert marker["source_model"] == best["model"]
