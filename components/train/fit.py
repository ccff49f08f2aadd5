"""The training itself: the datasets, the model, and each fine-tuning stage compiled, restored and fitted."""
from __future__ import annotations

import math
import os
import sys
import warnings

from components.common import model as model_contract
from components.train import data
from components.train import model as model_lib
from components.train.plan import Plan, TrainError, log
from components.train.session import Session


def positive_weights(plan: Plan):
    """The per-AU weight of positive labels in the loss (None for valence/arousal); a warning per note."""
    if plan.task != "au":
        return None
    weights, notes = data.positive_weights(plan.summary, plan.au_ids, plan.pos_weight, plan.max_pos_weight)
    for note in notes:
        log(f"warning: {note}")
    return weights


def datasets(plan: Plan, session: Session):
    """(train, validation) tf.data datasets of the examples; validation None when the split is empty."""
    kwargs = dict(task=plan.task, num_aus=len(plan.au_ids), image_size=plan.image_size,
                  batch_size=session.global_batch, seed=plan.seed)
    train_ds = data.make_dataset(
        plan.train_files,
        training=True,
        augment=plan.augment,
        cache=data.cache_fits(plan.n_train, plan.image_size, plan.cache_mb),
        shuffle_buffer=plan.shuffle_buffer,
        repeat=bool(plan.steps_per_epoch),
        **kwargs,
    )
    if not (plan.val_files and plan.n_val > 0):
        log("warning: no validation split: no early stopping, and the last epoch's weights are exported")
        return train_ds, None
    val_ds = data.make_dataset(
        plan.val_files, training=False, cache=data.cache_fits(plan.n_val, plan.image_size, plan.cache_mb), **kwargs
    )
    return train_ds, val_ds


def build(plan: Plan, session: Session, weights_file: str | None):
    """The Keras model to train, made in the session's strategy scope (its variables mirrored over the replicas)."""
    with session.strategy.scope():
        return model_lib.build_model(
            plan.spec, task=plan.task, num_outputs=plan.num_outputs, image_size=plan.image_size, weights=weights_file,
            dropout=plan.dropout, l2=plan.l2, bn_momentum=plan.bn_momentum,
        )


def stages(plan: Plan) -> list[tuple[str, int]]:
    """(fine-tune policy, epoch the stage ends after) of each stage: two-stage trains the head first, then all."""
    if plan.fine_tune.policy == "two-stage":
        return [("head", plan.head_epochs), ("full", plan.epochs)]
    return [(plan.fine_tune.policy, plan.epochs)]


def lr_schedule(learning_rate: float, decay: float, decay_epochs: float, steps_per_epoch: int, start_epoch: int):
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


def loss(plan: Plan, pos_weight):
    from components.train import losses

    if plan.task == "au":
        return losses.MaskedBinaryCrossentropy(pos_weight)
    return losses.MaskedMeanSquaredError()


def metrics(plan: Plan) -> list:
    from components.train import losses

    if plan.task == "au":
        return [
            losses.MaskedAUC(multi_label=True, num_labels=len(plan.au_ids), name="auc"),
            losses.MaskedMacroF1(len(plan.au_ids), name="f1"),
        ]
    return [losses.MaskedMeanAbsoluteError(name="mae")]


def compile_stage(net, plan: Plan, session: Session, policy: str, stage_start: int, pos_weight) -> None:
    """Sets which layers train under the stage's policy and compiles the model with a fresh optimizer whose schedule
    starts at the stage's first epoch."""
    from components.train import losses

    with session.strategy.scope():
        backbone_vars = model_lib.apply_fine_tune(net, policy, plan.fine_tune.last_n)
        net.compile(
            optimizer=losses.make_optimizer(
                plan.optimizer,
                lr_schedule(plan.learning_rate, plan.lr_decay, plan.lr_decay_epochs, session.steps, stage_start),
                backbone_variables=backbone_vars,
                backbone_multiplier=plan.backbone_lr_multiplier,
                rho=plan.rmsprop_rho,
                momentum=plan.rmsprop_momentum,
                epsilon=plan.epsilon,
            ),
            loss=loss(plan, pos_weight),
            metrics=metrics(plan),
        )


def stage_callbacks(plan: Plan, store, state: dict, stage_no: int, last: bool, validated: bool, out_dir: str,
                    extra=()) -> list:
    """The stage's checkpoint-and-history callback (early stopping in the last stage, given a validation split),
    TensorBoard into the model folder's logs/, then extra."""
    import keras

    from components.train import checkpoints

    return [
        checkpoints.TrainingState(store, state, stage=stage_no, patience=plan.patience,
                                  early_stopping=last and validated),
        keras.callbacks.TensorBoard(log_dir=os.path.join(out_dir, model_contract.LOGS_DIR), profile_batch=0),
        *extra,
    ]


def _tf_data_errors() -> tuple:
    import tensorflow as tf

    return (tf.errors.DataLossError, tf.errors.InvalidArgumentError)


def fit_stage(net, plan: Plan, session: Session, train_ds, val_ds, start: int, end_epoch: int, callbacks: list,
              verbose: int, checkpoint_dir: str) -> None:
    """Fits epochs start+1..end_epoch; a shard that cannot be read is a TrainError (the last epoch's checkpoint kept)."""
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
                steps_per_epoch=session.steps if plan.steps_per_epoch else None,
                callbacks=callbacks,
                shuffle=False,  # the dataset shuffles itself
                verbose=verbose,
            )
    except _tf_data_errors() as e:
        raise TrainError(
            f"reading the examples in {plan.examples_dir} failed: {str(e).splitlines()[0]}; rerun convert/filter "
            f"to rewrite them (the checkpoint of the last whole epoch is kept in {checkpoint_dir})"
        ) from e


def fit(net, plan: Plan, session: Session, store, state: dict, train_ds, val_ds, pos_weight, out_dir: str,
        callbacks=(), verbose: int | None = None, progress: bool = False) -> None:
    """Every stage in turn from where state says the run stopped (a checkpoint each epoch); progress prints progress
    lines of the batches of all epochs."""
    verbose = verbose if verbose is not None else (1 if sys.stdout.isatty() else 2)
    lines = None
    if progress:
        from components.train.progress import ProgressLines

        lines = ProgressLines(plan.epochs, session.steps)
        callbacks = (*callbacks, lines)
    plan_stages = stages(plan)
    start = state["epoch"]
    for stage_no, (policy, end_epoch) in enumerate(plan_stages, start=1):
        if state["stopped_early"]:
            break
        stage_start = 0 if stage_no == 1 else plan_stages[stage_no - 2][1]
        compile_stage(net, plan, session, policy, stage_start, pos_weight)
        if state["weights"] and state["stage"] == stage_no:
            with session.strategy.scope():  # the optimizer's slots are made here, mirrored like the weights
                store.restore(net, state)
        elif state["stage"] < stage_no:
            state["wait"] = 0  # a new stage earns its own patience
        if start >= end_epoch:
            continue  # done before the restart
        if stage_no > 1:
            log(f"stage {stage_no}: {policy} fine-tuning from epoch {start + 1}")
        cbs = stage_callbacks(plan, store, state, stage_no, last=stage_no == len(plan_stages),
                              validated=val_ds is not None, out_dir=out_dir, extra=callbacks)
        fit_stage(net, plan, session, train_ds, val_ds, start, end_epoch, cbs, verbose, store.dir)
        start = state["epoch"]
    if lines is not None:
        lines.close()
