"""Benchmark of the train step: images/s of the tf.data input pipeline alone and of training steps, and on a GPU
InceptionV3 and VGG16 at 224x224 with mixed precision. Prints tables; asserts nothing.

    python benchmarks/train.py                      # this machine, the demo's recipe (--preset demo)
    python benchmarks/train.py --backbone vgg16 --image-size 224 --batch-size 32
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components.train.params import SCRATCH_BN_MOMENTUM, SPEC as TRAIN  # noqa: E402
from pipeline.defaults import DEMO_PRESET, PRESETS  # noqa: E402

DEMO = PRESETS[DEMO_PRESET]  # the recipe of a CPU and no ImageNet weights; the pipeline's defaults want a GPU


def _pipeline_rate(files, size, batch, augment, cache, passes=1) -> float:
    """Images/s of the input pipeline alone: read, decode, resize (, augment), batch; the last of `passes` timed."""
    from components.train import data

    ds = data.make_dataset(files, task="au", num_aus=11, image_size=size, batch_size=batch, training=True,
                           augment=augment, cache=cache)
    rate = 0.0
    for _ in range(passes):
        start, seen = time.perf_counter(), 0
        for x, _ in ds:
            seen += int(x.shape[0])
        rate = seen / (time.perf_counter() - start)
    return rate


def _compiled_model(backbone: str, size: int, weights=None):
    from components.train import backbones, losses
    from components.train import model as model_lib

    spec = backbones.get(backbone)
    net = model_lib.build_model(spec, task="au", num_outputs=11, image_size=size, weights=weights,
                                dropout=TRAIN.defaults.dropout, l2=TRAIN.defaults.l2,
                                bn_momentum=SCRATCH_BN_MOMENTUM)
    slow = model_lib.apply_fine_tune(net, "full")
    net.compile(
        optimizer=losses.make_optimizer(DEMO["optimizer"], DEMO["learning_rate"],
                                        backbone_variables=slow, backbone_multiplier=1.0),
        loss=losses.MaskedBinaryCrossentropy(),
        metrics=[losses.MaskedAUC(multi_label=True, num_labels=11, name="auc")],
    )
    return net


def _step_rate(backbone: str, size: int, batch: int, steps: int) -> float:
    """Images/s of training steps alone, on batches already in memory (the input pipeline out of the way)."""
    import numpy as np
    import tensorflow as tf

    net = _compiled_model(backbone, size)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = (rng.random((batch, 11)) < 0.3).astype("float32")
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    warmup = max(2, steps // 5)
    net.fit(ds, steps_per_epoch=warmup, epochs=1, verbose=0)  # traces the step function
    start = time.perf_counter()
    net.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch / (time.perf_counter() - start)


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"\n{title}")
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"| {'-' * width} | ----- |")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default=DEMO["backbone"])
    p.add_argument("--image-size", type=int, default=DEMO["image_size"], help="0 follows the backbone")
    p.add_argument("--batch-size", type=int, default=DEMO["batch_size"], help="0 follows the backbone")
    p.add_argument("--examples", type=int, default=1024, help="synthetic 128 px JPEG examples in the train split")
    p.add_argument("--steps", type=int, default=20, help="timed training steps")
    p.add_argument("--gpu-steps", type=int, default=50, help="timed steps per GPU backbone")
    args = p.parse_args(argv)

    import tensorflow as tf

    from components.common import examples as ex
    from components.train import backbones, synthetic

    spec = backbones.get(args.backbone)
    size = args.image_size or spec.default_size
    batch = args.batch_size or spec.default_batch_size
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.write_examples(tmp, {"train": args.examples}, size=128, au_ids=list(range(11)), shards=4)
        files = ex.shard_files(tmp, "train")
        _pipeline_rate(files, size, batch, augment=True, cache=False)  # TensorFlow's first pass is slower: not timed
        plain = _pipeline_rate(files, size, batch, augment=False, cache=False)
        first = _pipeline_rate(files, size, batch, augment=True, cache=False)
        cached = _pipeline_rate(files, size, batch, augment=True, cache=True, passes=2)
    steps = _step_rate(args.backbone, size, batch, args.steps)
    cpus = os.cpu_count()
    _table(
        f"train on this machine's CPU ({cpus} cores): {spec.name} at {size}px, batch {batch}",
        [
            ("input pipeline: decode + resize (images/s)", f"{plain:.0f}"),
            ("input pipeline: decode + resize + augment (images/s)", f"{first:.0f}"),
            ("input pipeline: cached, augment (images/s)", f"{cached:.0f}"),
            ("training steps alone (images/s)", f"{steps:.0f}"),
            ("input pipeline / training steps, first epoch", f"{first / steps:.1f}x"),
            ("input pipeline / training steps, cached epochs", f"{cached / steps:.1f}x"),
            ("an epoch of 1,400 images (s)", f"{1400 / min(steps, first):.1f}"),
        ],
    )

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("\nno GPU visible: the InceptionV3 / VGG16 mixed-precision figures need one (run this on a GPU node)")
        return 0
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    rows = []
    for name in ("inceptionv3", "vgg16"):
        gspec = backbones.get(name)
        rate = _step_rate(name, 224, gspec.default_batch_size, args.gpu_steps)
        rows.append((f"{name} 224x224, batch {gspec.default_batch_size}, mixed float16 (images/s)", f"{rate:.0f}"))
        rows.append((f"{name}: an epoch of 1M images (min)", f"{1e6 / rate / 60:.1f}"))
    keras.mixed_precision.set_global_policy("float32")
    device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    _table(f"training steps on {len(gpus)} GPU(s): {device}", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
