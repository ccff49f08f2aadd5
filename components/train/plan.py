"""The train step's plan: its arguments checked and resolved, the examples read, the weights chosen, before any training.

Also what every part of the step shares: TrainError and the step's log line.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from components.common import examples as ex
from components.common import model as model_contract
from components.common import storage
from components.common.errors import StepRefusal
from components.train import backbones, data
from components.train import model as model_lib
from components.train.params import OPTIMIZERS, SCRATCH_BN_MOMENTUM


class TrainError(StepRefusal, ValueError):
    """Bad arguments or examples: the message says which and what to do."""


def log(msg: str) -> None:
    print(f"train: {msg}", flush=True)


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


def resolve_image_size(spec: backbones.Backbone, image_size: int) -> int:
    size = int(image_size) or spec.default_size
    if size < spec.min_size:
        raise TrainError(f"--image-size {size}: backbone {spec.name} needs at least {spec.min_size} px")
    return size


def make_plan(examples_dir: str, output_dir: str, *, task, backbone, image_size, weights, fine_tune, epochs,
              batch_size, optimizer, learning_rate, seed, checkpoint_dir, augment, lr_decay, lr_decay_epochs, l2,
              dropout, rmsprop_rho, rmsprop_momentum, epsilon, backbone_lr_multiplier, patience, pos_weight,
              max_pos_weight, bn_momentum, cache_mb, shuffle_buffer, mixed_precision, steps_per_epoch) -> Plan:
    """The plan of logic.run's arguments (their meaning is there), checked; TrainError names a bad one and the fix."""
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
    return Plan(
        examples_dir=examples_dir, output_dir=output_dir, task=task, spec=spec, fine_tune=ft,
        image_size=resolve_image_size(spec, image_size), weights=str(weights), epochs=epochs,
        head_epochs=head_epochs, batch_per_replica=int(batch_size) or spec.default_batch_size,
        optimizer=optimizer, learning_rate=float(learning_rate), seed=int(seed), checkpoint_dir=checkpoint_dir,
        augment=bool(augment), lr_decay=float(lr_decay), lr_decay_epochs=float(lr_decay_epochs), l2=float(l2),
        dropout=float(dropout), rmsprop_rho=float(rmsprop_rho), rmsprop_momentum=float(rmsprop_momentum),
        epsilon=float(epsilon), backbone_lr_multiplier=float(backbone_lr_multiplier), patience=int(patience),
        pos_weight=str(pos_weight).strip().lower(), max_pos_weight=float(max_pos_weight),
        bn_momentum=float(bn_momentum or 0) or None,  # 0 = follow the weights (see use_weights)
        cache_mb=float(cache_mb), shuffle_buffer=int(shuffle_buffer), mixed_precision=bool(mixed_precision),
        steps_per_epoch=int(steps_per_epoch),
    )


def read_examples(plan: Plan) -> None:
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


def use_weights(plan: Plan, workdir: str) -> str | None:
    """The local file of the plan's starting weights (fetched into workdir), None for a random backbone; a random
    backbone's BatchNorm momentum and learning rate follow from it."""
    try:
        weights_file = backbones.resolve_weights(plan.weights, workdir)
    except FileNotFoundError as e:
        raise TrainError(str(e)) from e
    if weights_file is None:
        if plan.bn_momentum is None:
            plan.bn_momentum = SCRATCH_BN_MOMENTUM
        # A slower backbone protects pretrained features; a random backbone has none to protect.
        plan.backbone_lr_multiplier = 1.0
    return weights_file
