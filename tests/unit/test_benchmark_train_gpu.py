"""benchmarks/train_gpu.py at tiny settings on this machine's CPU (TensorFlow backend), its argument checks, and
the two backend-agnostic fixes in components/train/losses.py it needed to run on JAX."""
import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "train_gpu.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("train_gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
