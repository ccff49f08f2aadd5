"""Fine-tunes a keras.applications backbone on contract-3 examples and writes the contract-4 model folder."""
from __future__ import annotations

import datetime
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

from components.common import examples as ex
from components.common import model as model_contract
from components.common import storage
from components.common.errors import StepRefusal
from components.common.faces import FaceSettings
from components.train import backbones, data
from components.train import model as model_lib
from components.train.params import SCRATCH_BN_MOMENTUM, SPEC


class TrainError(StepRefusal, ValueError):
    """Bad arguments or examples: the message says which and what to do."""


def _log(msg: str) -> None:
    print(f"train: {msg}", flush=True)


def _devices(mixed_precision: bool):
    """(strategy, replicas, device words, mixed precision on?) for the GPUs this process sees."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    use_mp = bool(gpus) and mixed_precision
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mp else "float32")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    words = f"{len(gpus)} GPU(s)" if gpus else "CPU"
    return strategy, strategy.num_replicas_in_sync, words, use_mp


def resolve_image_size(spec: backbones.Backbone, image_size: int) -> int:
    size = int(image_size) or spec.default_size
    if size < spec.min_size:
        raise TrainError(f"--image-size {size}: backbone {spec.name} needs at least {spec.min_size} px")
    return size


def _lr_schedule(learning_rate: float, decay: float, decay_epochs: float, steps_per_epoch: int, start_epoch: int):
    """The study's staircase decay (x decay every decay_epochs), continued from start_epoch."""
    import keras

    initial = learning_rate * decay ** math.floor(start_epoch / decay_epochs) if decay_epochs > 0 else learning_rate
    if decay_epochs <= 0 or decay >= 1.0:
        return initial
    return keras.optimizers.schedules.ExponentialDecay(
        initial_learning_rate=initial,
        decay_steps=max(1, int(round(decay_epochs * steps_per_epoch))),
        decay_rate=decay,
        staircase=True,
    )


def _versions() -> dict:
    import keras
    import numpy
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
    }


@dataclass
class Plan:
    """What a run decided before training: its resolved arguments and what the examples hold."""

    examples_dir: str
    output_dir: str
    task: str
    spec: backbones.Backbone
    fine_tune: model_lib.FineTune
    image_size: int
    weights: str  # as given: imagenet, none, a path or URI
    epochs: int
    head_epochs: int  # two-stage only
    batch_per_replica: int
    optimizer: str
    learning_rate: float
    seed: int
    checkpoint_dir: str
    augment: bool
    lr_decay: float
    lr_decay_epochs: float
    l2: float
    dropout: float
    rmsprop_rho: float
    rmsprop_momentum: float
    epsilon: float
    backbone_lr_multiplier: float
    patience: int
    pos_weight: str
    max_pos_weight: float
    bn_momentum: float | None
    cache_mb: float
    shuffle_buffer: int
    mixed_precision: bool
    steps_per_epoch: int
    summary: dict = field(default_factory=dict)
    au_ids: list = field(default_factory=list)
    train_files: list = field(default_factory=list)
    val_files: list = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0

    @property
    def num_outputs(self) -> int:
        return len(self.au_ids) if self.task == "au" else 2


def run(
    examples_dir: str,
    output_dir: str,
    task: str = SPEC.defaults.task,
    backbone: str = SPEC.defaults.backbone,
    image_size: int = SPEC.defaults.image_size,
    weights: str = SPEC.defaults.weights,
    fine_tune: str = SPEC.defaults.fine_tune,
    epochs: int = SPEC.defaults.epochs,
    batch_size: int = SPEC.defaults.batch_size,
    optimizer: str = SPEC.defaults.optimizer,
    learning_rate: float = SPEC.defaults.learning_rate,
    seed: int = SPEC.defaults.seed,
    checkpoint_dir: str = SPEC.defaults.checkpoint_dir,
    augment: bool = SPEC.defaults.augment,
    *,
    lr_decay: float = SPEC.defaults.lr_decay,
    lr_decay_epochs: float = SPEC.defaults.lr_decay_epochs,
    l2: float = SPEC.defaults.l2,
    dropout: float = SPEC.defaults.dropout,
    rmsprop_rho: float = SPEC.defaults.rmsprop_rho,
    rmsprop_momentum: float = SPEC.defaults.rmsprop_momentum,
    epsilon: float = SPEC.defaults.epsilon,
    backbone_lr_multiplier: float = SPEC.defaults.backbone_lr_multiplier,
    patience: int = SPEC.defaults.patience,
    pos_weight: str = SPEC.defaults.pos_weight,
    max_pos_weight: float = SPEC.defaults.max_pos_weight,
    bn_momentum: float | None = SPEC.defaults.bn_momentum,
    cache_mb: float = SPEC.defaults.cache_mb,
    shuffle_buffer: int = SPEC.defaults.shuffle_buffer,
    mixed_precision: bool = SPEC.defaults.mixed_precision,
    steps_per_epoch: int = SPEC.defaults.steps_per_epoch,
    callbacks=(),
    verbose: int | None = None,
    progress: bool = False,
) -> dict:
    """Trains, checkpointing every epoch (and resuming from the last checkpoint), then exports contract 4 to output_dir.

    bn_momentum 0 (or None) means: SCRATCH_BN_MOMENTUM when weights is none, the
    backbone's own otherwise. steps_per_epoch 0 means one pass over the train split.
    callbacks are extra Keras callbacks (tests, tools). progress prints progress lines (batches of all
    epochs, components.common.progress) for a pipeline's console. Returns a summary dict.
    """
    import keras

    from components.train.losses import OPTIMIZERS

    started = time.time()
    task = str(task).strip().lower()
    if task not in model_contract.TASKS:
        raise TrainError(f"--task {task!r}: expected au (Action Units) or va (valence/arousal)")
    try:
        spec = backbones.get(backbone)
        ft = model_lib.parse_fine_tune(fine_tune)
    except ValueError as e:
        raise TrainError(str(e)) from e
    optimizer = str(optimizer).strip().lower()
    if optimizer not in OPTIMIZERS:
        raise TrainError(f"--optimizer {optimizer!r}: expected rmsprop, adam or adamw")
    if str(pos_weight).strip().lower() not in data.POS_WEIGHT_MODES:
        raise TrainError(f"--pos-weight {pos_weight!r}: expected one of {', '.join(data.POS_WEIGHT_MODES)}")
    if int(epochs) < 1:
        raise TrainError(f"--epochs {epochs}: expected at least 1")
    if int(batch_size) < 0:
        raise TrainError(f"--batch-size {batch_size}: expected a positive number, or 0 for the backbone's default")
    if not float(learning_rate) > 0:
        raise TrainError(f"--learning-rate {learning_rate}: expected a positive number")
    epochs = int(epochs)
    head_epochs = 0
    if ft.policy == "two-stage":
        head_epochs = ft.head_epochs or max(1, epochs // 3)
        if head_epochs >= epochs:
            raise TrainError(
                f"--fine-tune {ft} with --epochs {epochs}: the head-only stage must leave epochs for the second stage"
            )
    plan = Plan(
        examples_dir=examples_dir, output_dir=output_dir, task=task, spec=spec, fine_tune=ft,
        image_size=resolve_image_size(spec, image_size), weights=str(weights), epochs=epochs,
        head_epochs=head_epochs, batch_per_replica=int(batch_size) or spec.default_batch_size,
        optimizer=optimizer, learning_rate=float(learning_rate), seed=int(seed), checkpoint_dir=checkpoint_dir,
        augment=bool(augment), lr_decay=float(lr_decay), lr_decay_epochs=float(lr_decay_epochs), l2=float(l2),
        dropout=float(dropout), rmsprop_rho=float(rmsprop_rho), rmsprop_momentum=float(rmsprop_momentum),
        epsilon=float(epsilon), backbone_lr_multiplier=float(backbone_lr_multiplier), patience=int(patience),
        pos_weight=str(pos_weight).strip().lower(), max_pos_weight=float(max_pos_weight),
        bn_momentum=float(bn_momentum or 0) or None,  # 0 = follow the weights (see above)
        cache_mb=float(cache_mb), shuffle_buffer=int(shuffle_buffer), mixed_precision=bool(mixed_precision),
        steps_per_epoch=int(steps_per_epoch),
    )
    _read_examples(plan)

    workdir = tempfile.mkdtemp(prefix="train-")
    try:
        try:
            weights_file = backbones.resolve_weights(weights, workdir)
        except FileNotFoundError as e:
            raise TrainError(str(e)) from e
        if weights_file is None:
            if plan.bn_momentum is None:
                plan.bn_momentum = SCRATCH_BN_MOMENTUM
            # A slower backbone protects pretrained features; a random backbone has none to protect.
            plan.backbone_lr_multiplier = 1.0
        return _train(plan, weights_file, workdir, started, callbacks, verbose, progress)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        shutil.rmtree(workdir, ignore_errors=True)


def _read_examples(plan: Plan) -> None:
    """Fills the plan from examples_summary.json and the shards; raises TrainError on what cannot be trained."""
    examples_dir = plan.examples_dir
    try:
        summary = ex.read_summary(examples_dir)
    except FileNotFoundError as e:
        raise TrainError(str(e)) from e
    au_ids = [int(a) for a in summary.get("au_ids") or []]
    if not au_ids:
        raise TrainError(
            f"{storage.join(examples_dir, ex.EXAMPLES_SUMMARY_FILE)} lists no au_ids; rerun convert/filter")
    if plan.task == "va" and not summary.get("has_va"):
        raise TrainError(
            f"--task va: the examples in {examples_dir} carry no valence/arousal (examples_summary.json has_va is "
            "false); use --task au, or a sheet with valence and arousal columns"
        )
    train_files = ex.shard_files(examples_dir, "train")
    val_files = ex.shard_files(examples_dir, "validation")
    if not train_files:
        raise TrainError(
            f"{examples_dir} has no train-*.tfrecord shards; expected a folder written by filter (or convert)"
        )
    try:
        data.check_first_example(train_files, au_ids)
    except ValueError as e:
        raise TrainError(str(e)) from e
    plan.summary, plan.au_ids, plan.train_files, plan.val_files = summary, au_ids, train_files, val_files
    plan.n_train = data.split_count(summary, "train", train_files)
    plan.n_val = data.split_count(summary, "validation", val_files) if val_files else 0
    if plan.n_train == 0:
        raise TrainError(f"{examples_dir}: the train split has no examples")


def _train(plan: Plan, weights_file: str | None, workdir: str, started: float, callbacks, verbose,
           progress: bool = False) -> dict:
    import keras

    from components.train import checkpoints, export, losses

    p = plan
    keras.utils.set_random_seed(p.seed)
    strategy, replicas, device_words, use_mp = _devices(p.mixed_precision)
    global_batch = p.batch_per_replica * replicas
    steps = p.steps_per_epoch or max(1, math.ceil(p.n_train / global_batch))

    # ---------------------------------------------------------------- output and checkpoints
    remote_out = storage.is_gcs(p.output_dir)
    out_dir = os.path.join(workdir, "model") if remote_out else p.output_dir
    os.makedirs(out_dir, exist_ok=True)
    ckpt_dir = p.checkpoint_dir or storage.join(p.output_dir, "checkpoints")
    fingerprint = {
        "task": p.task,
        "backbone": p.spec.name,
        "image_size": p.image_size,
        "au_ids": p.au_ids,
        "fine_tune": str(p.fine_tune),
        "optimizer": p.optimizer,
    }
    store = checkpoints.Store(ckpt_dir, workdir)
    try:
        state = store.load_state()
        if state is not None:
            checkpoints.check_fingerprint(state, fingerprint, ckpt_dir)
    except ValueError as e:
        raise TrainError(str(e)) from e
    if state is not None:
        state["attempts"] = state.get("attempts", 0) + 1
        _log(f"resuming after epoch {state['epoch']} from the checkpoint in {ckpt_dir}")
    else:
        state = checkpoints.new_state(fingerprint)
    resumed_from = state["epoch"]

    pos_weight = None
    if p.task == "au":
        pos_weight, notes = data.positive_weights(p.summary, p.au_ids, p.pos_weight, p.max_pos_weight)
        for note in notes:
            _log(f"warning: {note}")
    _log(
        f"{p.spec.name} at {p.image_size}px, weights {p.weights}, fine-tune {p.fine_tune}, task {p.task}; "
        f"{p.n_train} train / {p.n_val} validation examples; batch {p.batch_per_replica} x {replicas} replica(s) "
        f"on {device_words}{', mixed precision' if use_mp else ''}; {p.epochs} epochs of {steps} steps"
    )
    if weights_file is None and p.fine_tune.policy in ("head", "last"):
        _log(f"warning: --fine-tune {p.fine_tune} with --weights none trains on top of a random backbone")

    # ---------------------------------------------------------------- datasets
    ds_kwargs = dict(
        task=p.task, num_aus=len(p.au_ids), image_size=p.image_size, batch_size=global_batch, seed=p.seed
    )
    train_ds = data.make_dataset(
        p.train_files,
        training=True,
        augment=p.augment,
        cache=data.cache_fits(p.n_train, p.image_size, p.cache_mb),
        shuffle_buffer=p.shuffle_buffer,
        repeat=bool(p.steps_per_epoch),
        **ds_kwargs,
    )
    val_ds = None
    if p.val_files and p.n_val > 0:
        val_ds = data.make_dataset(
            p.val_files, training=False, cache=data.cache_fits(p.n_val, p.image_size, p.cache_mb), **ds_kwargs
        )
    else:
        _log("warning: no validation split: no early stopping, and the last epoch's weights are exported")

    # ---------------------------------------------------------------- model, stages, fit
    with strategy.scope():
        net = model_lib.build_model(
            p.spec, task=p.task, num_outputs=p.num_outputs, image_size=p.image_size, weights=weights_file,
            dropout=p.dropout, l2=p.l2, bn_momentum=p.bn_momentum,
        )
    if p.fine_tune.policy == "two-stage":
        stages = [("head", p.head_epochs), ("full", p.epochs)]
    else:
        stages = [(p.fine_tune.policy, p.epochs)]
    verbose = verbose if verbose is not None else (1 if sys.stdout.isatty() else 2)
    lines = None
    if progress:
        from components.train.progress import ProgressLines

        lines = ProgressLines(p.epochs, steps)
        callbacks = (*callbacks, lines)
    start = state["epoch"]
    for stage_no, (policy, end_epoch) in enumerate(stages, start=1):
        if state["stopped_early"]:
            break
        stage_start = 0 if stage_no == 1 else stages[stage_no - 2][1]
        with strategy.scope():
            backbone_vars = model_lib.apply_fine_tune(net, policy, p.fine_tune.last_n)
            net.compile(
                optimizer=losses.make_optimizer(
                    p.optimizer,
                    _lr_schedule(p.learning_rate, p.lr_decay, p.lr_decay_epochs, steps, stage_start),
                    backbone_variables=backbone_vars,
                    backbone_multiplier=p.backbone_lr_multiplier,
                    rho=p.rmsprop_rho,
                    momentum=p.rmsprop_momentum,
                    epsilon=p.epsilon,
                ),
                loss=_loss(p, pos_weight),
                metrics=_metrics(p),
            )
        if state["weights"] and state["stage"] == stage_no:
            with strategy.scope():  # the optimizer's slots are made here, mirrored like the weights
                store.restore(net, state)
        elif state["stage"] < stage_no:
            state["wait"] = 0  # a new stage earns its own patience
        if start >= end_epoch:
            continue  # done before the restart
        if stage_no > 1:
            _log(f"stage {stage_no}: {policy} fine-tuning from epoch {start + 1}")
        cbs = [
            checkpoints.TrainingState(
                store, state, stage=stage_no, patience=p.patience,
                early_stopping=stage_no == len(stages) and val_ds is not None,
            ),
            keras.callbacks.TensorBoard(log_dir=os.path.join(out_dir, model_contract.LOGS_DIR), profile_batch=0),
            *callbacks,
        ]
        try:
            with warnings.catch_warnings():
                # Keras warns at the end of every dataset whose length it cannot know in advance
                # (interleaved shards): that end is expected here, not a shortage.
                warnings.filterwarnings("ignore", message=".*input ran out of data.*")
                net.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=end_epoch,
                    initial_epoch=start,
                    steps_per_epoch=steps if p.steps_per_epoch else None,
                    callbacks=cbs,
                    shuffle=False,  # the dataset shuffles itself
                    verbose=verbose,
                )
        except _tf_data_errors() as e:
            raise TrainError(
                f"reading the examples in {p.examples_dir} failed: {str(e).splitlines()[0]}; rerun convert/filter "
                f"to rewrite them (the checkpoint of the last whole epoch is kept in {ckpt_dir})"
            ) from e
        start = state["epoch"]
    if lines is not None:
        lines.close()

    # ---------------------------------------------------------------- export
    if store.load_best(net, state):
        _log(f"best validation loss {state['best']:.4f} at epoch {state['best_epoch']}: exporting those weights")
    keras.mixed_precision.set_global_policy("float32")
    # A float32 twin without optimizer, regularisers or compile state: model.keras loads with
    # plain Keras and the SavedModel runs on a CPU as well as a GPU.
    export_model = model_lib.build_model(
        p.spec, task=p.task, num_outputs=p.num_outputs, image_size=p.image_size, weights=None,
        dropout=p.dropout, l2=0.0, bn_momentum=p.bn_momentum,
    )
    export.copy_weights(net, export_model)
    train_seconds = round(time.time() - started, 1)
    history_doc = {
        "epochs": state["epochs"],
        "stages": state["stages"],
        "metrics": state["history"],
        "best_epoch": state["best_epoch"] or None,
        "best_val_loss": state["best"],
        "stopped_early": state["stopped_early"],
        "resumed_from_epoch": resumed_from or None,
    }
    run_facts = {
        "epochs_run": len(state["epochs"]),
        "best_epoch": state["best_epoch"] or None,
        "stopped_early": state["stopped_early"],
        "global_batch_size": global_batch,
        "replicas": replicas,
        "device": device_words,
        "mixed_precision": use_mp,
        "pos_weight": pos_weight,
        "pos_weight_mode": p.pos_weight,
        "train_seconds": train_seconds,
    }
    export.write_model_folder(
        export_model, out_dir, image_size=p.image_size, task=p.task,
        config=model_config(p, run_facts), history_doc=history_doc,
    )
    if remote_out:
        storage.copy_tree(out_dir, p.output_dir)
    store.delete_all(state)
    _log(f"model written to {p.output_dir} after {len(state['epochs'])} epochs ({train_seconds:.0f} s)")
    return {
        "output_dir": p.output_dir,
        "epochs_run": len(state["epochs"]),
        "best_epoch": state["best_epoch"] or None,
        "stopped_early": state["stopped_early"],
        "resumed_from_epoch": resumed_from,
        "history": history_doc,
        "train_seconds": train_seconds,
        "image_size": p.image_size,
        "au_ids": p.au_ids,
    }


def _tf_data_errors() -> tuple:
    import tensorflow as tf

    return (tf.errors.DataLossError, tf.errors.InvalidArgumentError)


def _loss(p: Plan, pos_weight):
    from components.train import losses

    if p.task == "au":
        return losses.MaskedBinaryCrossentropy(pos_weight)
    return losses.MaskedMeanSquaredError()


def _metrics(p: Plan) -> list:
    from components.train import losses

    if p.task == "au":
        return [
            losses.MaskedAUC(multi_label=True, num_labels=len(p.au_ids), name="auc"),
            losses.MaskedMacroF1(len(p.au_ids), name="f1"),
        ]
    return [losses.MaskedMeanAbsoluteError(name="mae")]


def model_config(p: Plan, run_facts: dict) -> dict:
    """model_config.json: what evaluate, predict and push need to use the model, and how it was trained."""
    head = model_contract.OUTPUT_NAMES[p.task]
    return {
        "task": p.task,
        "backbone": p.spec.name,
        "image_size": p.image_size,
        "au_ids": p.au_ids if p.task == "au" else [],
        "outputs": {
            "name": head,
            "size": p.num_outputs,
            "activation": "sigmoid" if p.task == "au" else "linear",
            "labels": [f"AU{a}" for a in p.au_ids] if p.task == "au" else ["valence", "arousal"],
        },
        "threshold": 0.5 if p.task == "au" else None,
        # What a new image goes through before the signature (components.common.facefinder.crop.prepare): the
        # settings convert cut the training images with, so predict and any server do the same.
        "faces": FaceSettings.from_dict((p.summary.get("parameters") or {}).get("faces")).to_dict(),
        "signature": {"name": model_contract.SIGNATURE, "input": model_contract.SIGNATURE_INPUT, "output": head},
        "preprocessing": {
            "decode": "tf.io.decode_image(channels=3, expand_animations=False): JPEG, PNG, GIF (first frame) "
            "or BMP; not WebP",
            "resize": f"bilinear with antialiasing to {p.image_size}x{p.image_size}, aspect ratio not kept",
            "model_input": "RGB float32 in 0..255, [N, image_size, image_size, 3]",
            "backbone_preprocessing": f"{p.spec.preprocessing} (inside the model)",
        },
        "training": {
            "examples": p.examples_dir,
            "weights": p.weights,
            "fine_tune": str(p.fine_tune),
            "epochs": p.epochs,
            "head_epochs": p.head_epochs or None,
            "batch_size_per_replica": p.batch_per_replica,
            "optimizer": p.optimizer,
            "learning_rate": p.learning_rate,
            "lr_decay": p.lr_decay,
            "lr_decay_epochs": p.lr_decay_epochs,
            "backbone_lr_multiplier": p.backbone_lr_multiplier if p.fine_tune.policy in ("full", "two-stage") else None,
            "l2": p.l2,
            "dropout": p.dropout,
            "bn_momentum": p.bn_momentum,
            "augment": p.augment,
            "seed": p.seed,
            "train_examples": p.n_train,
            "validation_examples": p.n_val,
            **run_facts,
        },
        "versions": _versions(),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
