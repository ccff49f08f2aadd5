"""Fine-tunes a keras.applications backbone on contract-3 examples and writes the contract-4 model folder."""
from __future__ import annotations

import shutil
import tempfile
import time

from components.train import export, fit, session
from components.train.params import SPEC
from components.train.plan import make_plan, read_examples, use_weights


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

    started = time.time()
    plan = make_plan(examples_dir, output_dir, task=task, backbone=backbone, image_size=image_size, weights=weights,
                     fine_tune=fine_tune, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                     learning_rate=learning_rate, seed=seed, checkpoint_dir=checkpoint_dir, augment=augment,
                     lr_decay=lr_decay, lr_decay_epochs=lr_decay_epochs, l2=l2, dropout=dropout,
                     rmsprop_rho=rmsprop_rho, rmsprop_momentum=rmsprop_momentum, epsilon=epsilon,
                     backbone_lr_multiplier=backbone_lr_multiplier, patience=patience, pos_weight=pos_weight,
                     max_pos_weight=max_pos_weight, bn_momentum=bn_momentum, cache_mb=cache_mb,
                     shuffle_buffer=shuffle_buffer, mixed_precision=mixed_precision, steps_per_epoch=steps_per_epoch)
    read_examples(plan)
    workdir = tempfile.mkdtemp(prefix="train-")
    try:
        weights_file = use_weights(plan, workdir)
        run_session = session.start(plan)
        out_dir = export.local_folder(plan, workdir)
        store, state = session.resume(plan, workdir)
        resumed_from = state["epoch"]
        pos_weight = fit.positive_weights(plan)
        session.announce(plan, run_session, weights_file)
        train_ds, val_ds = fit.datasets(plan, run_session)
        net = fit.build(plan, run_session, weights_file)
        fit.fit(net, plan, run_session, store, state, train_ds, val_ds, pos_weight, out_dir, callbacks, verbose,
                progress)
        return export.export_run(net, plan, run_session, store, state, out_dir, pos_weight=pos_weight,
                                 resumed_from=resumed_from, started=started)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        shutil.rmtree(workdir, ignore_errors=True)
