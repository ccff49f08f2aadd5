"""Unit tests of the train step: backbones, masking, fine-tuning, weights, the input pipeline, resume, export."""
import json
import os

import numpy as np
import pytest

from components.common import examples as ex
from components.train import backbones, data, logic, synthetic
from components.train.plan import TrainError
from components.train import model as model_lib
from components.train.params import SCRATCH_BN_MOMENTUM

# Small and quick everywhere: tiny images, a handful of steps.
TINY = dict(backbone="compactcnn", weights="none", image_size=32, batch_size=8, optimizer="adam", learning_rate=0.01,
            verbose=0)


# ------------------------------------------------------------------------------------------ backbones


@pytest.mark.parametrize("name", list(backbones.BACKBONES))
def test_each_backbone_builds_at_a_small_input_size(name):
    spec = backbones.get(name)
    size = max(32, spec.min_size)
    net = model_lib.build_model(
        spec, task="au", num_outputs=11, image_size=size, weights=None, dropout=0.2, l2=4e-5, bn_momentum=0.9
    )
    assert net.output_shape == (None, 11)
    assert net.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    probs = net.predict(np.full((2, size, size, 3), 128.0, "float32"), verbose=0)
    assert probs.shape == (2, 11) and np.all((probs >= 0) & (probs <= 1))
    import keras

    layers = backbones.iter_layers(model_lib.backbone_of(net))
    bns = [la for la in layers if isinstance(la, keras.layers.BatchNormalization)]
    assert all(la.momentum == 0.9 for la in bns)
    assert bns or name == "vgg16"  # VGG16 has no BatchNorm


def test_unknown_backbone_names_the_valid_ones():
    with pytest.raises(ValueError, match="vgg16"):
        backbones.get("alexnet")


def test_caffe_preprocessing_matches_keras_applications():
    import keras

    spec = backbones.get("vgg16")
    (layer,) = backbones.preprocessing_layers(spec)
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    expected = keras.applications.vgg16.preprocess_input(x.copy())
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-3)


def test_imagenet_weights_are_asked_of_keras_applications(monkeypatch):
    import keras

    seen = {}
    real = keras.applications.VGG16

    def fake_vgg16(**kwargs):
        seen.update(kwargs)
        return real(**{**kwargs, "weights": None})

    monkeypatch.setattr(keras.applications, "VGG16", fake_vgg16)
    assert backbones.resolve_weights("imagenet", "/nonexistent") == "imagenet"
    model_lib.build_model(
        backbones.get("vgg16"), task="au", num_outputs=3, image_size=32, weights="imagenet", dropout=0.0, l2=0.0,
        bn_momentum=None,
    )
    assert seen["weights"] == "imagenet" and seen["include_top"] is False


def test_weights_file_loads_into_the_backbone(tmp_path):
    spec = backbones.get("vgg16")
    first = backbones.build(spec, 32, None)
    path = str(tmp_path / "vgg16_notop.weights.h5")
    first.save_weights(path)
    assert backbones.resolve_weights(path, str(tmp_path)) == path
    second = backbones.build(spec, 32, backbones.resolve_weights(path, str(tmp_path)))
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_missing_weights_file_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights.h5"):
        backbones.resolve_weights(str(tmp_path / "nope.h5"), str(tmp_path))
    assert backbones.resolve_weights("none", str(tmp_path)) is None


# ------------------------------------------------------------------------------------------ masking and losses


def test_unknown_label_gives_no_loss_and_no_gradient():
    import tensorflow as tf

    from components.train import losses

    loss_fn = losses.MaskedBinaryCrossentropy(pos_weight=[2.0, 1.0, 1.0])
    y = tf.constant([[1.0, 999.0, 0.0], [0.0, 999.0, 1.0]])
    pred = tf.Variable([[0.7, 0.2, 0.4], [0.1, 0.9, 0.6]])
    with tf.GradientTape() as tape:
        loss = loss_fn(y, pred)
    grad = tape.gradient(loss, pred).numpy()
    assert np.all(grad[:, 1] == 0.0)
    assert np.all(grad[:, [0, 2]] != 0.0)
    known = [-2 * np.log(0.7), -np.log(0.6), -np.log(0.9), -np.log(0.6)]
    np.testing.assert_allclose(float(loss), np.mean(known), rtol=1e-5)


def test_unknown_label_leaves_its_head_weights_untouched():
    import tensorflow as tf

    from components.train import losses

    net = model_lib.build_model(
        backbones.get("compactcnn"), task="au", num_outputs=3, image_size=32, weights=None, dropout=0.0, l2=0.0,
        bn_momentum=None,
    )
    x = tf.random.uniform((4, 32, 32, 3), 0, 255)
    y = tf.constant([[1.0, 999.0, 0.0]] * 4)
    head = net.get_layer("probabilities")
    with tf.GradientTape() as tape:
        loss = losses.MaskedBinaryCrossentropy()(y, net(x, training=True))
    g_kernel, g_bias = tape.gradient(loss, [head.kernel.value, head.bias.value])
    assert np.all(g_kernel.numpy()[:, 1] == 0) and g_bias.numpy()[1] == 0
    assert np.any(g_kernel.numpy()[:, 0] != 0)


def test_masked_metrics_ignore_unknown_labels():
    from components.train import losses

    y = np.array([[1, 0], [0, 999], [1, 1], [0, 0]], "float32")
    p = np.array([[0.9, 0.2], [0.1, 0.99], [0.8, 0.7], [0.3, 0.1]], "float32")
    auc = losses.MaskedAUC(multi_label=True, num_labels=2)
    auc.update_state(y, p)
    f1 = losses.MaskedMacroF1(2)
    f1.update_state(y, p)
    assert float(auc.result()) == pytest.approx(1.0)
    assert float(f1.result()) == pytest.approx(1.0)


def test_masked_mse_skips_missing_valence_arousal():
    import tensorflow as tf

    from components.train import losses

    y = tf.constant([[0.5, float("nan")], [0.0, 1.0]])
    p = tf.constant([[0.0, 100.0], [0.0, 0.0]])
    # three known values: (0.5 - 0)^2, (0 - 0)^2, (1 - 0)^2; the NaN one is skipped
    assert float(losses.MaskedMeanSquaredError()(y, p)) == pytest.approx(1.25 / 3)


def test_positive_weights_follow_the_train_split_and_are_capped():
    counts = {"1": {"positive": 10, "negative": 40}, "2": {"positive": 1, "negative": 99},
              "4": {"positive": 0, "negative": 5}, "6": {"positive": 50, "negative": 10}}
    summary = {"splits": {"train": {"au": counts}}}
    weights, warnings = data.positive_weights(summary, [1, 2, 4, 6], "balanced", max_weight=10.0)
    assert weights == [4.0, 10.0, 1.0, 1.0]
    assert len(warnings) == 1 and "AU4" in warnings[0]
    weights, _ = data.positive_weights(summary, [1, 2, 4, 6], "sqrt", max_weight=10.0)
    assert weights == [2.0, pytest.approx(99**0.5), 1.0, 1.0]
    assert data.positive_weights(summary, [1], "none", max_weight=10.0)[0] is None


# ------------------------------------------------------------------------------------------ fine-tuning


@pytest.mark.parametrize(
    "text, expected",
    [("head", ("head", 0, 0)), ("last:3", ("last", 3, 0)), ("full", ("full", 0, 0)),
     ("two-stage", ("two-stage", 0, 0)), ("two-stage:2", ("two-stage", 0, 2))],
)
def test_fine_tune_values_parse(text, expected):
    ft = model_lib.parse_fine_tune(text)
    assert (ft.policy, ft.last_n, ft.head_epochs) == expected
    assert str(ft) == text


@pytest.mark.parametrize("text", ["", "last", "last:0", "last:x", "head:2", "some"])
def test_bad_fine_tune_values_say_what_is_expected(text):
    with pytest.raises(ValueError, match="last:N"):
        model_lib.parse_fine_tune(text)


def _vgg16(size=32):
    return model_lib.build_model(
        backbones.get("vgg16"), task="au", num_outputs=3, image_size=size, weights=None, dropout=0.0, l2=0.0,
        bn_momentum=None,
    )


def test_fine_tune_policies_choose_the_trainable_layers():
    net = _vgg16()
    backbone = model_lib.backbone_of(net)
    head = net.get_layer("probabilities")

    assert model_lib.apply_fine_tune(net, "head") == []
    assert backbone.trainable_variables == [] and len(head.trainable_variables) == 2

    model_lib.apply_fine_tune(net, "last", last_n=3)
    trained = sorted({v.path.split("/")[0] for v in backbone.trainable_variables})
    assert trained == ["block5_conv1", "block5_conv2", "block5_conv3"]  # the study's VGG16 recipe

    slow = model_lib.apply_fine_tune(net, "full")
    assert len(slow) == len(backbone.trainable_variables) == 26
    assert net.get_layer("preprocess_caffe").trainable_variables == []  # preprocessing never learns

    with pytest.raises(ValueError, match="only 13"):
        model_lib.apply_fine_tune(net, "last", last_n=14)


def test_backbone_learning_rate_multiplier_slows_only_the_backbone():
    import tensorflow as tf

    from components.train import losses

    net = model_lib.build_model(
        backbones.get("compactcnn"), task="au", num_outputs=3, image_size=32, weights=None, dropout=0.0, l2=0.0,
        bn_momentum=None,
    )
    slow = model_lib.apply_fine_tune(net, "full")
    for name in losses.OPTIMIZERS:
        opt = losses.make_optimizer(name, 0.01, backbone_variables=slow, backbone_multiplier=0.0)
        before = [v.numpy().copy() for v in net.trainable_variables]
        x = tf.random.uniform((4, 32, 32, 3), 0, 255)
        with tf.GradientTape() as tape:
            loss = losses.MaskedBinaryCrossentropy()(tf.ones((4, 3)), net(x, training=True))
        grads = tape.gradient(loss, net.trainable_variables)
        opt.apply_gradients(zip(grads, net.trainable_variables))
        slow_ids = {id(v) for v in slow}
        for v, b in zip(net.trainable_variables, before):
            changed = not np.array_equal(v.numpy(), b)
            if name == "adamw" and id(v) in slow_ids:
                continue  # decoupled weight decay moves every variable
            assert changed == (id(v) not in slow_ids), (name, v.path)


def test_mixed_precision_model_trains_and_exports_to_a_float32_twin():
    import keras

    from components.train import export, losses

    spec = backbones.get("compactcnn")
    kw = dict(task="au", num_outputs=3, image_size=32, dropout=0.0, l2=4e-5, bn_momentum=None)
    keras.mixed_precision.set_global_policy("mixed_float16")  # what a GPU run uses
    try:
        net = model_lib.build_model(spec, weights=None, **kw)
        slow = model_lib.apply_fine_tune(net, "full")
        net.compile(optimizer=losses.make_optimizer("rmsprop", 0.01, backbone_variables=slow, backbone_multiplier=0.1),
                    loss=losses.MaskedBinaryCrossentropy([2.0, 1.0, 1.0]))
        assert isinstance(net.optimizer, keras.optimizers.LossScaleOptimizer)
        x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
        y = np.array([[1, 0, 999]] * 8, "float32")
        net.fit(x, y, batch_size=4, epochs=1, verbose=0)
        assert net.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    twin = model_lib.build_model(spec, weights=None, **kw)
    export.copy_weights(net, twin)
    np.testing.assert_allclose(twin.predict(x, verbose=0), net.predict(x, verbose=0), atol=2e-2)


# ------------------------------------------------------------------------------------------ input pipeline


def test_dataset_yields_pixels_and_labels_with_unknowns(tmp_path):
    summary = synthetic.write_examples(
        str(tmp_path), {"train": 12, "validation": 0, "test": 0}, size=40, unknown_rate=0.3, with_va=True, shards=3
    )
    files = ex.shard_files(str(tmp_path), "train")
    assert len(files) == 3
    ds = data.make_dataset(files, task="au", num_aus=4, image_size=24, batch_size=5, training=False)
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]
    x, y = batches[0]
    assert x.shape[1:] == (24, 24, 3) and x.dtype.name == "float32"
    assert 0 <= float(np.min(x)) and float(np.max(x)) <= 255
    labels_seen = set(np.concatenate([b[1].numpy().ravel() for b in batches]).tolist())
    assert labels_seen == {0.0, 1.0, 999.0}
    assert summary["splits"]["train"]["au"]["1"]["unknown"] > 0

    va = list(data.make_dataset(files, task="va", num_aus=4, image_size=24, batch_size=12, training=False))[0][1]
    assert va.shape == (12, 2) and np.all(np.isfinite(va.numpy()))


def test_training_dataset_is_cached_shuffled_and_augmented(tmp_path):
    synthetic.write_examples(str(tmp_path), {"train": 16}, size=32)
    files = ex.shard_files(str(tmp_path), "train")
    ds = data.make_dataset(
        files, task="au", num_aus=4, image_size=32, batch_size=16, training=True, augment=True, cache=True
    )
    first, second = (next(iter(ds))[0].numpy() for _ in range(2))
    assert first.shape == (16, 32, 32, 3) and first.min() >= 0 and first.max() <= 255
    assert not np.array_equal(first, second)  # each pass draws new augmentations / order


def test_augmentation_flip_alone_mirrors_the_image():
    x = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype("float32")
    none = {k: 0.0 for k in data.AUGMENT}
    out = data.augment_batch(x, strength={**none, "flip": 1.0}).numpy()
    np.testing.assert_allclose(out, x[:, :, ::-1, :], atol=1e-3)
    same = data.augment_batch(x, strength=none).numpy()
    np.testing.assert_allclose(same, x, atol=1e-3)


def test_decode_and_resize_reads_png_and_jpeg_alike():
    import io

    from PIL import Image

    img = synthetic.draw(np.array([True, False, True, False]), 48, np.random.default_rng(1))
    png = io.BytesIO()
    Image.fromarray(img).save(png, "PNG")
    from_png = data.decode_and_resize(png.getvalue(), 24).numpy()
    from_jpeg = data.decode_and_resize(synthetic.encode_jpeg(img, 100), 24).numpy()
    assert from_png.shape == (24, 24, 3)
    assert np.abs(from_png - from_jpeg).mean() < 4.0


# ------------------------------------------------------------------------------------------ runs: resume and export


class Preempted(Exception):
    """Stands for the node going away."""


def _callbacks():
    import keras

    class Interrupt(keras.callbacks.Callback):
        def __init__(self, at_epoch):
            super().__init__()
            self.at_epoch = at_epoch

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == self.at_epoch:
                raise Preempted(f"node lost before epoch {epoch + 1}")

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs, self.iterations = [], []

        def on_train_begin(self, logs=None):
            self.iterations.append(int(self.model.optimizer.iterations.numpy()))

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)

    return Interrupt, Record


@pytest.fixture(scope="module")
def tiny_examples(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    synthetic.write_examples(
        str(root), {"train": 32, "validation": 16, "test": 8}, size=40, unknown_rate=0.1, with_va=True, shards=2
    )
    return str(root)


@pytest.fixture(scope="module")
def resumed_run(tiny_examples, tmp_path_factory):
    """A two-stage run lost twice (at the stage boundary, then inside stage 2) and restarted each time."""
    Interrupt, Record = _callbacks()
    out = tmp_path_factory.mktemp("run") / "model"
    kw = dict(TINY, examples_dir=tiny_examples, output_dir=str(out), epochs=3, fine_tune="two-stage:1",
              steps_per_epoch=2)
    states = []
    with pytest.raises(Preempted):
        logic.run(**kw, callbacks=[Interrupt(1)])
    states.append(json.loads((out / "checkpoints" / "state.json").read_text()))
    with pytest.raises(Preempted):
        logic.run(**kw, callbacks=[Interrupt(2)])
    states.append(json.loads((out / "checkpoints" / "state.json").read_text()))
    record = Record()
    result = logic.run(**kw, callbacks=[record])
    return {"out": out, "states": states, "record": record, "result": result}


def test_a_restarted_run_resumes_after_its_last_checkpoint(resumed_run):
    first, second = resumed_run["states"]
    assert (first["epoch"], first["stage"]) == (1, 1)
    assert (second["epoch"], second["stage"]) == (2, 2)
    record, result = resumed_run["record"], resumed_run["result"]
    assert record.epochs == [2]  # only the epoch not yet done
    assert record.iterations == [2]  # the optimizer's state came back: 2 steps into stage 2
    assert result["resumed_from_epoch"] == 2
    history = json.loads((resumed_run["out"] / "history.json").read_text())
    assert history["epochs"] == [1, 2, 3] and history["stages"] == [1, 2, 2]
    assert all(len(v) == 3 for v in history["metrics"].values())
    assert {"loss", "val_loss", "auc", "val_auc"} <= set(history["metrics"])
    assert not (resumed_run["out"] / "checkpoints").exists()  # removed once the model is exported


def test_model_folder_holds_contract_4(resumed_run):
    out = resumed_run["out"]
    for name in ("saved_model/saved_model.pb", "model.keras", "model_config.json", "history.json",
                 "training_curves.png"):
        assert (out / name).is_file(), name
    assert any(f.startswith("events.out.tfevents") for _, _, fs in os.walk(out / "logs") for f in fs)
    config = json.loads((out / "model_config.json").read_text())
    assert config["au_ids"] == [1, 2, 4, 12] and config["task"] == "au" and config["image_size"] == 32
    assert config["backbone"] == "compactcnn" and config["training"]["fine_tune"] == "two-stage:1"
    # bn_momentum's default, 0, follows the weights: a backbone trained from scratch gets SCRATCH_BN_MOMENTUM.
    assert config["training"]["bn_momentum"] == SCRATCH_BN_MOMENTUM
    assert set(config["versions"]) >= {"tensorflow", "keras", "python"}


def test_exported_signature_on_encoded_bytes_gives_the_keras_models_probabilities(resumed_run, tiny_examples):
    import io

    import keras
    import tensorflow as tf
    from PIL import Image

    out = resumed_run["out"]
    sig = tf.saved_model.load(str(out / "saved_model")).signatures["serving_default"]
    _, inputs = sig.structured_input_signature
    assert list(inputs) == ["image_bytes"] and inputs["image_bytes"].dtype == tf.string
    records = [ex.example_to_dict(r) for r in ex.iter_examples(ex.shard_files(tiny_examples, "test"))]
    encoded = [r["encoded"] for r in records]
    png = io.BytesIO()
    Image.open(io.BytesIO(encoded[0])).save(png, "PNG")
    encoded.append(png.getvalue())  # any encoded image, not only JPEG
    served = sig(image_bytes=tf.constant(encoded))
    assert list(served) == ["probabilities"]
    probs = served["probabilities"].numpy()
    assert probs.shape == (len(encoded), 4) and probs.dtype == np.float32

    net = keras.saving.load_model(str(out / "model.keras"))
    images = np.stack([data.decode_and_resize(b, 32).numpy() for b in encoded])
    np.testing.assert_allclose(probs, net.predict(images, verbose=0), atol=1e-5)


def test_changed_settings_refuse_to_resume_a_checkpoint(tiny_examples, tmp_path):
    from components.train import checkpoints

    store = checkpoints.Store(str(tmp_path / "ckpt"), str(tmp_path))
    fingerprint = {"task": "au", "backbone": "compactcnn", "image_size": 32, "au_ids": [1, 2, 4, 12],
                   "fine_tune": "full", "optimizer": "adam"}
    store.save_state({**checkpoints.new_state(fingerprint), "epoch": 1})
    kw = dict(TINY, examples_dir=tiny_examples, output_dir=str(tmp_path / "m"), checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(TrainError, match="image_size: checkpoint 32, now 40"):
        logic.run(**{**kw, "image_size": 40})
    assert not (tmp_path / "m" / "model_config.json").exists()


def test_component_trains_valence_arousal(tiny_examples, tmp_path, capsys):
    import tensorflow as tf

    from components.train.component import train

    class Artifact:
        def __init__(self, path):
            self.path, self.uri, self.metadata = str(path), str(path), {}

    model = Artifact(tmp_path / "model")
    train.python_func(
        examples=Artifact(tiny_examples), model=model, task="va", backbone="compactcnn", image_size=32, weights="none",
        fine_tune="full", epochs=1, batch_size=16, optimizer="rmsprop", learning_rate=0.001, seed=1, checkpoint_dir="",
        augment=False,
    )
    config = json.loads((tmp_path / "model" / "model_config.json").read_text())
    assert config["task"] == "va" and config["outputs"]["name"] == "valence_arousal"
    # Progress lines for the local console's bar, beside Keras's own per-epoch lines.
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("progress:")]
    steps = -(-config["training"]["train_examples"] // 16)
    assert lines[0] == f"progress: train 0/{steps} batches, epoch 1/1"
    assert lines[-1] == f"progress: train {steps}/{steps} batches, epoch 1/1"
    sig = tf.saved_model.load(str(tmp_path / "model" / "saved_model")).signatures["serving_default"]
    records = [ex.example_to_dict(r) for r in ex.iter_examples(ex.shard_files(tiny_examples, "test"))]
    va = sig(image_bytes=tf.constant([r["encoded"] for r in records]))["valence_arousal"].numpy()
    assert va.shape == (len(records), 2) and np.all(np.isfinite(va))


def test_progress_callback_counts_batches_over_every_epoch_of_every_stage():
    from components.train.progress import ProgressLines

    out = []
    cb = ProgressLines(epochs=4, steps_per_epoch=10, write=out.append, clock=lambda: 0.0)
    cb.on_epoch_begin(1)  # resumed after epoch 1
    for batch in range(12):  # an epoch longer than planned stays at its end
        cb.on_train_batch_end(batch)
    cb.on_epoch_end(1)
    cb.on_epoch_begin(2)  # the next stage's fit() goes on with the same bar
    cb.on_train_batch_end(0)
    cb.close()  # stopped early
    assert out == ["progress: train 10/40 batches, epoch 2/4", "progress: train 21/40 batches, epoch 3/4"]


# ------------------------------------------------------------------------------------------ the run's parts


def _plan(examples_dir, **settings):
    from components.train.params import SPEC
    from components.train.plan import make_plan, read_examples

    plan = make_plan(examples_dir, "unused", **{**SPEC.defaults.as_dict(), **settings})
    read_examples(plan)
    return plan


def test_a_plan_takes_the_backbones_defaults_and_reads_the_examples(tiny_examples):
    spec = backbones.get("compactcnn")
    plan = _plan(tiny_examples, backbone="compactcnn", image_size=0, batch_size=0, optimizer=" Adam ")
    assert (plan.image_size, plan.batch_per_replica) == (spec.default_size, spec.default_batch_size)
    assert plan.optimizer == "adam" and plan.au_ids == [1, 2, 4, 12] and plan.num_outputs == 4
    assert (plan.n_train, plan.n_val) == (32, 16)


def test_two_stage_fine_tuning_is_a_head_stage_then_a_full_one(tiny_examples):
    from components.train import fit

    assert fit.stages(_plan(tiny_examples, fine_tune="two-stage:2", epochs=5)) == [("head", 2), ("full", 5)]
    assert fit.stages(_plan(tiny_examples, fine_tune="two-stage", epochs=6)) == [("head", 2), ("full", 6)]
    assert fit.stages(_plan(tiny_examples, fine_tune="last:3", epochs=4)) == [("last", 4)]


def test_the_learning_rate_falls_by_staircase_and_a_later_stage_goes_on_from_its_epoch():
    from components.train import fit

    schedule = fit.lr_schedule(0.1, 0.5, 2.0, steps_per_epoch=10, start_epoch=0)
    assert [float(schedule(step)) for step in (0, 19, 20, 40)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert float(fit.lr_schedule(0.1, 0.5, 2.0, steps_per_epoch=10, start_epoch=4)(0)) == pytest.approx(0.025)
    assert fit.lr_schedule(0.1, 1.0, 2.0, steps_per_epoch=10, start_epoch=4) == 0.1  # no decay: a constant


def test_a_random_backbone_gets_the_scratch_batchnorm_momentum_and_the_heads_learning_rate(tiny_examples, tmp_path):
    from components.train.plan import use_weights

    plan = _plan(tiny_examples, weights="none", bn_momentum=0.0, backbone_lr_multiplier=0.1)
    assert use_weights(plan, str(tmp_path)) is None
    assert (plan.bn_momentum, plan.backbone_lr_multiplier) == (SCRATCH_BN_MOMENTUM, 1.0)


def test_resume_starts_afresh_then_counts_the_attempts_on_a_checkpoint_of_the_same_settings(tiny_examples, tmp_path):
    from components.train import checkpoints, session

    plan = _plan(tiny_examples, checkpoint_dir=str(tmp_path / "ckpt"))
    store, state = session.resume(plan, str(tmp_path))
    assert state == checkpoints.new_state(session.fingerprint(plan))
    store.save_state({**state, "epoch": 2})
    _, again = session.resume(plan, str(tmp_path))
    assert (again["epoch"], again["attempts"]) == (2, 1)


# ------------------------------------------------------------------------------------------ errors and the CLI


def test_cli_reports_a_missing_examples_folder(tmp_path, capsys):
    from components.train.__main__ import main

    code = main(["--examples", str(tmp_path / "none"), "--output", str(tmp_path / "m")])
    assert code == 2
    err = capsys.readouterr().err
    assert "examples_summary.json is missing" in err and "Traceback" not in err


def test_cli_reports_bad_arguments(tiny_examples, tmp_path, capsys):
    from components.train.__main__ import main

    assert main(["--examples", tiny_examples, "--output", str(tmp_path), "--fine-tune", "last:x"]) == 2
    assert "--fine-tune 'last:x'" in capsys.readouterr().err
    assert main(["--examples", tiny_examples, "--output", str(tmp_path), "--backbone", "inceptionv3",
                 "--image-size", "64"]) == 2
    assert "at least 75" in capsys.readouterr().err
    assert main(["--examples", tiny_examples, "--output", str(tmp_path), "--fine-tune", "two-stage:3",
                 "--epochs", "3"]) == 2
    assert "head-only stage" in capsys.readouterr().err


def test_va_task_needs_valence_arousal_in_the_examples(tmp_path):
    synthetic.write_examples(str(tmp_path), {"train": 4}, with_va=False)
    with pytest.raises(TrainError, match="carry no valence/arousal"):
        logic.run(examples_dir=str(tmp_path), output_dir=str(tmp_path / "m"), task="va")


def test_examples_with_other_au_ids_than_the_summary_are_refused(tmp_path):
    synthetic.write_examples(str(tmp_path), {"train": 4}, au_ids=(1, 2))
    summary = ex.read_summary(str(tmp_path))
    summary["au_ids"] = [1, 2, 4]
    ex.write_summary(str(tmp_path), summary)
    with pytest.raises(TrainError, match="label/au_ids \\[1, 2\\]"):
        logic.run(examples_dir=str(tmp_path), output_dir=str(tmp_path / "m"))


# ------------------------------------------------------------------------------------------ learning


@pytest.mark.slow
def test_a_short_run_learns_a_synthetic_set_well_above_chance(tmp_path):
    import tensorflow as tf
    from sklearn.metrics import f1_score

    root = str(tmp_path / "examples")
    synthetic.write_examples(root, {"train": 256, "validation": 64, "test": 128}, size=32, seed=3)
    logic.run(examples_dir=root, output_dir=str(tmp_path / "m"), backbone="compactcnn", weights="none", image_size=32,
              epochs=5, batch_size=16, optimizer="adam", learning_rate=0.003, augment=False, verbose=0)
    sig = tf.saved_model.load(str(tmp_path / "m" / "saved_model")).signatures["serving_default"]
    records = [ex.example_to_dict(r) for r in ex.iter_examples(ex.shard_files(root, "test"))]
    probs = sig(image_bytes=tf.constant([r["encoded"] for r in records]))["probabilities"].numpy()
    truth = np.array([r["au"] for r in records])
    # chance (always "active") scores about 0.5 at 35% prevalence
    assert f1_score(truth, probs >= 0.5, average="macro") >= 0.9
