"""The whole DAG in containers: `pipeline.py run --runner docker` runs each task in its image with kfp.local's
DockerRunner (the KFP executor inside the image, artifacts passed through the mounted pipeline root as a cluster
passes them) and pushes a model; the compiled spec names the same images, commands and arguments."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from pipeline import containers
from pipeline.dag import STEPS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU_STEPS = ("train", "evaluate")


def compiled_containers(path, image_cpu: str, image_gpu: str) -> dict[str, dict]:
    """Task name -> its executor's container (image, command, args) in the spec compile.py writes."""
    done = subprocess.run([sys.executable, "compile.py", "--output", str(path), "--image-cpu", image_cpu,
                           "--image-gpu", image_gpu], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    spec = yaml.safe_load(path.read_text())
    executors = spec["deploymentSpec"]["executors"]
    out = {}
    for task, t in spec["root"]["dag"]["tasks"].items():
        label = spec["components"][t["componentRef"]["name"]]["executorLabel"]
        out[task] = executors[label]["container"]
    return out


@pytest.mark.slow
def test_the_dag_runs_in_containers_and_the_spec_names_what_ran(images, tmp_path):
    runs = tmp_path / "runs"
    run_dir = runs / "in-containers"
    proc = subprocess.run(
        [sys.executable, "pipeline.py", "run", "--runner", "docker", "--image-cpu", images["cpu"],
         "--image-gpu", images["gpu"], "--runs-dir", str(runs), "--run-dir", str(run_dir), "--preset", "demo",
         "--demo-size", "120", "--epochs", "1", "--min-macro-f1", "0", "--min-macro-auc", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=1500, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert f"each step in its container ({images['cpu']}, {images['gpu']})" in proc.stdout
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["ok"] and [s["name"] for s in summary["steps"]] == list(STEPS)
    assert all(s["status"] == "succeeded" for s in summary["steps"]), summary
    # the KFP executor ran inside each image and wrote its output through the mounted pipeline root
    for step in STEPS:
        assert "Wrote executor output file" in (run_dir / "logs" / f"{step}.log").read_text(), step
    assert "model pushed to" in proc.stdout
    model_root = runs / "registry" / "au-detector"
    latest = (model_root / "LATEST").read_text().strip()
    assert (model_root / latest / "saved_model" / "saved_model.pb").is_file()

    ran = json.loads((run_dir / containers.CONTAINERS_FILE).read_text())
    assert list(ran) == list(STEPS)
    for step, record in ran.items():
        assert record["exit_code"] == 0
        assert record["image"] == images["gpu" if step in GPU_STEPS else "cpu"], step
        assert record["network"] == ("host" if step == "download" else "none"), step
        assert record["user"] == f"{os.getuid()}:{os.getgid()}"
        assert str(run_dir) in record["mounts"] and str(runs / "registry") in record["mounts"]

    # What the spec a cluster runs names is what ran here: image, command, and args (the executor input aside).
    spec = compiled_containers(tmp_path / "pipeline.yaml", images["cpu"], images["gpu"])
    assert set(spec) == set(ran)
    for step, container in spec.items():
        record = ran[step]
        assert container["image"] == record["image"], step
        command, args = container["command"], container["args"]
        assert record["command"][: len(command)] == command, step
        ran_args = record["command"][len(command):]
        assert len(ran_args) == len(args), step
        for expected, actual in zip(args, ran_args):
            if expected == "{{$}}":
                executor_input = json.loads(actual)  # kfp.local fills the placeholder as the launcher does
                assert set(executor_input) >= {"inputs", "outputs"}, step
            else:
                assert actual == expected, step
