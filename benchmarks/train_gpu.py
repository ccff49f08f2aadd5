"""Benchmark of training steps on a GPU: images/s of InceptionV3 and VGG16 at 224x224 with mixed precision, on
whichever Keras 3 backend KERAS_BACKEND names (jax, torch or tensorflow). Prints a table; asserts nothing.

The network, loss, metrics and optimizer are the train step's own (components/train: backbones.py, model.py,
losses.py; RMSprop with rho 0.9 and momentum 0.9, the staircase learning-rate decay, the backbone at a tenth of
the head's rate, L2 and dropout as components/train/params.py declares them), none of which needs TensorFlow, so it
runs on a machine that has JAX or PyTorch and no TensorFlow. Weights are random (nothing is downloaded; the arithmetic is
the same as from ImageNet weights). The batches are synthetic uint8 images and 0/1/999 labels held in memory:
this measures the training steps alone; benchmarks/train.py measures the tf.data input pipeline that feeds them.
Each backbone and policy runs in a process of its own (a clean policy and compile cache, and the backend's own
peak device memory); the compile and warm-up steps are not timed, and a time budget caps the whole run.

    KERAS_BACKEND=jax python3 benchmarks/train_gpu.py --policies mixed_float16,mixed_bfloat16 --json train_gpu.json
    python benchmarks/train_gpu.py --backbones vgg16 --batch-size 64 --steps 100
    python benchmarks/train_gpu.py --image-size 75 --batch-size 4 --steps 2 --warmup 1   # a CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from components.train.params import SPEC as TRAIN  # noqa: E402

# The train step's policy: mixed_float16 wherever a GPU is visible (components/train/session.py), so "auto"
# measures what train does today. On Hopper (H100/H200) bfloat16 and float16 run the tensor cores at the
# same rate, and mixed_bfloat16 needs no loss scaling (float32's exponent range: Keras wraps the optimizer
# in no LossScaleOptimizer, so no finite-check and skipped steps), which makes it the sensible policy for
# new runs there; the GPU command measures both, so the README can say what a switch would gain.
POLICIES = ("auto", "mixed_float16", "mixed_bfloat16", "float32")
NOMINAL_STEPS_PER_EPOCH = 100  # where the learning-rate decay steps: no effect on the cost of a step
MIN_SHARE_S = 30.0  # kept back for each configuration still to run when one may overrun its share
MIN_TIMED_S = 3.0  # the least a configuration is timed for, its share spent or not


def _device():
    """(backend, device name, GPU visible?, framework version) for the backend Keras runs on."""
    import keras

    backend = keras.backend.backend()
    cpu = f"CPU ({os.cpu_count()} cores)"
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        gpu = d.platform in ("gpu", "cuda", "rocm")
        return backend, (d.device_kind if gpu else cpu), gpu, f"jax {jax.__version__}"
    if backend == "torch":
        import torch

        gpu = torch.cuda.is_available()
        return backend, (torch.cuda.get_device_name(0) if gpu else cpu), gpu, f"torch {torch.__version__}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else cpu
        return backend, name, bool(gpus), f"tensorflow {tf.__version__}"
    return backend, cpu, False, backend


def _peak_memory_bytes(backend: str) -> int | None:
    """The backend allocator's peak on the first GPU since this process started; None on a CPU or if not exposed."""
    try:
        if backend == "jax":
            import jax

            return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
        if backend == "torch":
            import torch

            return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
        if backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_physical_devices("GPU"):
                return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    except Exception:  # noqa: BLE001 - a missing figure, not a failed benchmark
        return None
    return None


def _compiled_model(backbone: str, size: int, num_aus: int, fine_tune: str):
    """The network, loss, metrics and optimizer exactly as components/train/fit.py builds and compiles them."""
    from components.train import backbones, losses
    from components.train import model as model_lib
    from components.train.fit import lr_schedule

    spec = backbones.get(backbone)
    ft = model_lib.parse_fine_tune(fine_tune)
    if ft.policy == "two-stage":
        raise ValueError("--fine-tune two-stage is two runs: measure head and full instead")
    net = model_lib.build_model(spec, task="au", num_outputs=num_aus, image_size=size, weights=None,
                                dropout=TRAIN.defaults.dropout, l2=TRAIN.defaults.l2, bn_momentum=None)
    backbone_vars = model_lib.apply_fine_tune(net, ft.policy, ft.last_n)
    net.compile(
        optimizer=losses.make_optimizer(
            "rmsprop",  # the study's
            lr_schedule(0.001, TRAIN.defaults.lr_decay, TRAIN.defaults.lr_decay_epochs, NOMINAL_STEPS_PER_EPOCH, 0),
            backbone_variables=backbone_vars,
            backbone_multiplier=TRAIN.defaults.backbone_lr_multiplier,  # as with pretrained weights
            rho=TRAIN.defaults.rmsprop_rho,
            momentum=TRAIN.defaults.rmsprop_momentum,
            epsilon=TRAIN.defaults.epsilon,
        ),
        loss=losses.MaskedBinaryCrossentropy([2.0] * num_aus),  # per-AU positive weights: their values cost nothing
        metrics=[
            losses.MaskedAUC(multi_label=True, num_labels=num_aus, name="auc"),
            losses.MaskedMacroF1(num_aus, name="f1"),
        ],
    )
    return net


def _measure(backbone: str, size: int, batch: int, policy: str, fine_tune: str, warmup: int, steps: int,
             deadline: float) -> dict:
    """One row: warm-up (compile) steps, then up to `steps` timed steps, fewer if time.time() passes deadline."""
    import keras
    import numpy as np

    from components.common import labels

    backend, device, gpu, framework = _device()
    if policy == "auto":
        policy = "mixed_float16" if gpu else "float32"
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    num_aus = len(labels.DEFAULT_AU_IDS)
    net = _compiled_model(backbone, size, num_aus, fine_tune)

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    y = (rng.random((batch, num_aus)) < 0.3).astype("float32")
    y[rng.random((batch, num_aus)) < 0.2] = labels.UNKNOWN  # as sparse as EmotioNet's labels

    def batches():
        while True:
            yield x, y

    class Clock(keras.callbacks.Callback):
        """Counts the steps and stops the epoch at the deadline (the step in flight ends it)."""

        async_safe = True  # no logs read: Keras keeps dispatching steps ahead of it

        def __init__(self):
            super().__init__()
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            if time.time() >= deadline:
                self.model.stop_training = True

    start = time.perf_counter()
    # The first steps trace and compile the step: not timed.
    net.fit(batches(), steps_per_epoch=warmup, epochs=1, verbose=0, shuffle=False)
    warmup_s = time.perf_counter() - start
    deadline = max(deadline, time.time() + MIN_TIMED_S)  # a compile that ate the share still gets a few seconds
    clock = Clock()
    start = time.perf_counter()
    # fit returns once the device has finished (the weights are read back), so the clock covers every step.
    net.fit(batches(), steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[clock])
    elapsed = time.perf_counter() - start
    return {
        "backbone": backbone,
        "image_size": size,
        "batch_size": batch,
        "policy": policy,
        "backend": backend,
        "device": device,
        "images_per_s": clock.steps * batch / elapsed,
        "ms_per_step": 1000.0 * elapsed / clock.steps,
        "peak_memory_bytes": _peak_memory_bytes(backend),
        "steps": clock.steps,
        "warmup_steps": warmup,
        "warmup_s": warmup_s,
        "fine_tune": fine_tune,
        "jit_compile": bool(net.jit_compile),
        "versions": f"keras {keras.__version__}, {framework}, python {platform.python_version()}",
        "error": None,
    }


def _child(args) -> int:
    row = _measure(args.backbones, args.image_size, args.batch_size, args.policies, args.fine_tune, args.warmup,
                   args.steps, args.deadline)
    with open(args.row, "w") as f:
        json.dump(row, f)
    return 0


def _run_one(args, backbone: str, size: int, batch: int, policy: str, share_s: float, hard_s: float) -> dict:
    """Measures one configuration in a child process: the timed steps stop at share_s, the child is killed at hard_s."""
    start = time.time()
    base = {"backbone": backbone, "image_size": size, "batch_size": batch, "policy": policy,
            "images_per_s": None, "ms_per_step": None, "peak_memory_bytes": None}
    with tempfile.TemporaryDirectory() as tmp:
        row_file = os.path.join(tmp, "row.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--backbones", backbone, "--image-size", str(size),
               "--batch-size", str(batch), "--policies", policy, "--fine-tune", args.fine_tune,
               "--warmup", str(args.warmup), "--steps", str(args.steps), "--deadline", str(start + share_s),
               "--row", row_file]
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            proc = subprocess.run(cmd, env=env, timeout=hard_s, check=False)
        except subprocess.TimeoutExpired:
            return {**base, "error": f"killed at the time budget, after {hard_s:.0f} s"}
        if proc.returncode != 0 or not os.path.exists(row_file):
            return {**base, "error": f"exited with status {proc.returncode} (its output is above)"}
        with open(row_file) as f:
            return json.load(f)


def _figure(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _table(rows: list[dict]) -> None:
    head = ["backbone", "size", "batch", "policy", "backend", "device", "images/s", "ms/step", "peak memory",
            "timed steps", "compile + warm-up"]
    lines = []
    for r in rows:
        if r.get("error"):
            cells = [r["backbone"], str(r["image_size"]), str(r["batch_size"]), r["policy"], r.get("backend", ""),
                     r.get("device", ""), f"failed: {r['error']}", "", "", "", ""]
        else:
            peak = r["peak_memory_bytes"]
            cells = [r["backbone"], str(r["image_size"]), str(r["batch_size"]), r["policy"], r["backend"],
                     r["device"], _figure(r["images_per_s"]), f"{r['ms_per_step']:.1f}",
                     "n/a" if peak is None else f"{peak / 2**30:.1f} GiB", str(r["steps"]),
                     f"{r['warmup_steps']} steps, {r['warmup_s']:.0f} s"]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    print("\ntraining steps alone, synthetic in-memory batches")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for cells in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |")
    versions = sorted({r["versions"] for r in rows if r.get("versions")})
    if versions:
        print("; ".join(versions))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="inceptionv3,vgg16", help="comma-separated (components/train/backbones.py)")
    p.add_argument("--image-size", type=int, default=224, help="input side in px (InceptionV3 needs at least 75)")
    p.add_argument("--batch-size", type=int, default=0, help="0 follows the backbone (the study's: 128, VGG16 32)")
    p.add_argument("--policies", default="auto",
                   help=f"comma-separated Keras dtype policies out of {', '.join(POLICIES)}; "
                        "auto = the train step's (mixed_float16 on a GPU, float32 on a CPU)")
    p.add_argument("--fine-tune", default="full", help="head, last:N or full (the default: every layer learns)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (the step's compile among them)")
    p.add_argument("--steps", type=int, default=100, help="timed steps per configuration, fewer if its time runs out")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="seconds for the whole run, shared among the configurations (keeps a run on a GPU "
                        "rented by the minute short)")
    p.add_argument("--json", default="", help="also write the rows to this JSON file")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=math.inf, help=argparse.SUPPRESS)
    p.add_argument("--row", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1 (the first step compiles; it is never timed)")
    if args.child:
        return _child(args)

    from components.train import backbones

    try:
        specs = [backbones.get(b) for b in args.backbones.split(",") if b.strip()]
    except ValueError as e:
        p.error(str(e))
    policies = [s.strip() for s in args.policies.split(",") if s.strip()]
    for policy in policies:
        if policy not in POLICIES:
            p.error(f"--policies: unknown policy {policy!r}; expected {', '.join(POLICIES)}")
    for spec in specs:
        if args.image_size < spec.min_size:
            p.error(f"--image-size {args.image_size}: {spec.name} needs at least {spec.min_size} px")

    # The figures first (every backbone under the first policy), then the other policies.
    configs = [(spec, policy) for policy in policies for spec in specs]
    started = time.time()
    rows = []
    for i, (spec, policy) in enumerate(configs):
        batch = args.batch_size or spec.default_batch_size
        left = len(configs) - i
        remaining = args.budget_s - (time.time() - started)
        # An overrun borrows from the later ones, down to their minimum, never below its own fair share.
        hard = max(remaining / left, remaining - MIN_SHARE_S * (left - 1))
        if hard < 20:
            rows.append({"backbone": spec.name, "image_size": args.image_size, "batch_size": batch, "policy": policy,
                         "error": "skipped: the time budget is spent"})
            continue
        print(f"train_gpu: {spec.name} {args.image_size}px batch {batch} {policy} "
              f"({remaining / left:.0f} s of {remaining:.0f} s left)", flush=True)
        # Timing stops at the share (or 15 s before the kill); the child is killed at `hard`.
        rows.append(_run_one(args, spec.name, args.image_size, batch, policy, min(remaining / left, hard - 15), hard))

    _table(rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"benchmark": "train_gpu", "argv": sys.argv[1:], "total_s": time.time() - started, "rows": rows},
                      f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
