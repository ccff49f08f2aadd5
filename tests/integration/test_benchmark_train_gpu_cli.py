"""benchmarks/train_gpu.py run as a program at tiny settings on this machine's CPU (TensorFlow backend)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "train_gpu.py")


@pytest.mark.slow
def test_tiny_run_writes_a_row_per_backbone(tmp_path):
    # --fine-tune head keeps TensorFlow's tracing of InceptionV3 short (about 40 s in all on 2 cores;
    # full takes 75 s here); the full path ran on JAX and PyTorch when the script was written.
    out = tmp_path / "rows.json"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--image-size", "75", "--batch-size", "2", "--steps", "2", "--warmup", "1",
         "--fine-tune", "head", "--budget-s", "240", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["backbone"] for r in rows] == ["inceptionv3", "vgg16"]
    for r in rows:
        assert r["error"] is None, r
        assert r["images_per_s"] > 0 and r["ms_per_step"] > 0 and r["steps"] >= 1
        assert (r["image_size"], r["batch_size"], r["backend"], r["policy"]) == (75, 2, "tensorflow", "float32")
    assert "| inceptionv3 | 75" in proc.stdout and "| vgg16" in proc.stdout
