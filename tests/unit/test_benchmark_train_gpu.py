"""benchmarks/train_gpu.py at tiny settings on this machine's CPU (TensorFlow backend), its argument checks, and
the two backend-agnostic fixes in components/train/losses.py it needed to run on JAX."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "train_gpu.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("train_gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image-size", "60"], "inceptionv3 needs at least 75"),
        (["--policies", "float16"], "unknown policy"),
        (["--backbones", "alexnet"], "unknown backbone"),
        (["--steps", "0"], "at least 1"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit):
        _load_script().main(argv)
    assert message in capsys.readouterr().err


def test_backbone_learning_rate_keeps_no_model_variable_in_the_optimizer():
    # A list of variables set on a Keras optimizer is tracked as its state: each checkpoint held the
    # backbone twice and JAX refused the step (one buffer donated twice). Only their keys are kept now.
    from components.train import backbones, losses
    from components.train import model as model_lib

    net = model_lib.build_model(
        backbones.get("compactcnn"), task="au", num_outputs=3, image_size=32, weights=None, dropout=0.0, l2=0.0,
        bn_momentum=None,
    )
    slow = model_lib.apply_fine_tune(net, "full")
    opt = losses.make_optimizer("rmsprop", 0.01, backbone_variables=slow, backbone_multiplier=0.1)
    opt.build(net.trainable_variables)
    model_ids = {id(v) for v in net.weights}
    assert not [v.path for v in opt.variables if id(v) in model_ids]
    assert len(opt._backbone_indices) == len(slow) > 0


def test_macro_f1_resets_to_zero():
    from components.train import losses

    f1 = losses.MaskedMacroF1(2)
    f1.update_state(np.array([[1.0, 0.0]]), np.array([[0.9, 0.8]]))
    assert float(f1.result()) > 0
    f1.reset_state()
    assert float(f1.result()) == 0.0
    assert all(np.array_equal(np.asarray(v), np.zeros(2)) for v in (f1.tp, f1.fp, f1.fn))
