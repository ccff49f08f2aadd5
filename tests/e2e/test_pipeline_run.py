"""End to end: `python pipeline.py run` on a small demo set runs every step, pushes a model, and predict uses it.

The pipeline runs once (the module's `e2e` fixture); each test checks one part of what it left, so a machine
without Chromium skips only the browser check."""
import json
import os
import subprocess
import sys
import types

import pandas as pd
import pytest

from pipeline.dag import STEPS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check_in_chromium(page, screenshot) -> None:
    """Renders the page in headless Chromium (Debian's chromium: .ci/run installs it): no console error, and a
    screenshot that is not blank. Skipped, saying so, where there is no Chromium."""
    import shutil

    import numpy as np
    from PIL import Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH: the report was checked as HTML only; "
                    "apt-get install chromium (as .ci/run does) to render it")
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
         "--v=0", "--window-size=1200,2400", f"--screenshot={screenshot}", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2400, 1200) and pixels.std() > 10  # tables and plots, not an empty page


def run_cli(args, timeout):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


REPORT_HEADINGS = ("Steps", "Blessing", "Action Units on the test split", "Training", "Examples", "Validation",
                   "Downloads", "AU coverage of the sheet")


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """The one pipeline run the tests of this module check, each a part of what it left."""
    runs = tmp_path_factory.mktemp("e2e") / "runs"
    proc = run_cli(
        [
            "pipeline.py", "run", "--runs-dir", str(runs), "--run-dir", str(runs / "e2e"),
            "--preset", "demo", "--demo-size", "400", "--epochs", "2",
            # a 2-epoch model on 400 faces is judged on the plumbing, not on its quality
            "--min-macro-f1", "0", "--min-macro-auc", "0",
        ],
        timeout=1500,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = json.loads((runs / "e2e" / "run_summary.json").read_text())
    registry = runs / "registry"
    model_root = next(p for p in registry.iterdir() if p.is_dir())
    return types.SimpleNamespace(proc=proc, runs=runs, summary=summary, model_root=model_root,
                                 report=runs / "e2e" / "report.html")


@pytest.mark.slow
def test_pipeline_run_on_the_demo_set_pushes_a_model(e2e):
    proc, runs, summary, model_root = e2e.proc, e2e.runs, e2e.summary, e2e.model_root
    assert summary["ok"]
    assert [s["name"] for s in summary["steps"]] == list(STEPS)
    assert all(s["status"] == "succeeded" for s in summary["steps"]), summary
    for step in STEPS:
        assert step in proc.stdout
        # the console has a line as each step ends; the step's full output is in its log
        assert any(line.startswith(f"{step:<16} succeeded") for line in proc.stdout.splitlines())
        assert (runs / "e2e" / "logs" / f"{step}.log").stat().st_size > 0
    assert "KFP Executor" not in proc.stdout
    assert len(proc.stdout.splitlines()) < 60, proc.stdout
    assert "model pushed to" in proc.stdout
    latest = (model_root / "LATEST").read_text().strip()
    assert (model_root / latest / "saved_model").is_dir()
    # The demo's in-the-wild scenes went through the face step: crops, counted by reason.
    assert "faces: " in proc.stdout and " face crops" in proc.stdout
    config = json.loads((model_root / latest / "model_config.json").read_text())
    assert config["faces"]["mode"] == "crop" and config["faces"]["size"] == 160


@pytest.mark.slow
def test_the_run_report_is_one_page_made_from_the_runs_own_outputs(e2e):
    report = e2e.report
    assert f"run report: {report}" in e2e.proc.stdout
    page = report.read_text()
    for heading in REPORT_HEADINGS:
        assert f"<h2>{heading}</h2>" in page
    assert "data:image/png;base64," in page and "AUs are annotated on fewer than 1% of the images" in page
    assert "http_404" in page and "face crops" in page and "TP" in page
    # the DAG's report step made the same page as an HTML artifact: what the KFP UI shows of a cluster run
    artifact = next(s for s in e2e.summary["steps"] if s["name"] == "report")["outputs"]["page"]
    shown = open(artifact).read()
    for heading in REPORT_HEADINGS:
        assert f"<h2>{heading}</h2>" in shown
    assert "data:image/png;base64," in shown and "Pushed: version" in shown


@pytest.mark.slow
def test_the_run_report_renders_in_chromium(e2e, tmp_path):
    check_in_chromium(e2e.report, tmp_path / "report.png")


@pytest.mark.slow
def test_predict_with_the_pushed_model_crops_the_face_as_convert_did(e2e):
    # what a user does next: predict on a scene with the pushed model; it crops the face as convert did
    demo_dir = next((e2e.runs / "demo").iterdir())
    assert demo_dir.name.endswith("-wild")
    truth = pd.read_parquet(demo_dir / "labels.parquet")
    row = truth[truth["name"].str.endswith(".jpg") & truth["face_x0"].notna() & (truth["occluder"] == "")].iloc[0]
    image = demo_dir / "images" / row["name"]
    pred = run_cli(["-m", "components.predict", "--model", str(e2e.model_root), "--json", str(image)], timeout=300)
    assert pred.returncode == 0, pred.stderr[-3000:]
    (scored,) = json.loads(pred.stdout)["images"]
    assert scored["image"] == str(image) and scored["faces"][0]["status"] == "cropped"
    x, y, w, h = scored["faces"][0]["box"]  # the largest face first
    cx, cy = x + w / 2, y + h / 2
    assert row["face_x0"] < cx < row["face_x1"] and row["face_y0"] < cy < row["face_y1"]


@pytest.mark.slow
def test_pipeline_run_with_a_bad_source_says_so(tmp_path):
    proc = run_cli(["pipeline.py", "run", "--runs-dir", str(tmp_path), "--source", str(tmp_path / "missing.xlsx")], timeout=120)
    assert proc.returncode == 2
    assert "missing.xlsx does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
