"""What a training run works with before it fits: the seeded devices (GPUs mirrored, mixed precision), the global
batch and steps per epoch, and the checkpoint state it resumes from."""
from __future__ import annotations

import math
from dataclasses import dataclass

from components.common import storage
from components.train.plan import Plan, TrainError, log


@dataclass
class Session:
    strategy: object  # a tf.distribute strategy: the model and its optimizer are made in its scope
    replicas: int
    device: str  # in words, for the log and model_config.json: "CPU", "2 GPU(s)"
    mixed_precision: bool  # on: float16 compute
    global_batch: int  # the plan's batch per replica times the replicas
    steps: int  # per epoch


def detect_devices(mixed_precision: bool):
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


def start(plan: Plan) -> Session:
    """Seeds Keras, picks the devices and sizes the batches (steps_per_epoch 0: one pass over the train split)."""
    import keras

    keras.utils.set_random_seed(plan.seed)
    strategy, replicas, device, use_mp = detect_devices(plan.mixed_precision)
    global_batch = plan.batch_per_replica * replicas
    steps = plan.steps_per_epoch or max(1, math.ceil(plan.n_train / global_batch))
    return Session(strategy, replicas, device, use_mp, global_batch, steps)


def fingerprint(plan: Plan) -> dict:
    """The settings a checkpoint must have been written with to be resumed."""
    return {
        "task": plan.task,
        "backbone": plan.spec.name,
        "image_size": plan.image_size,
        "au_ids": plan.au_ids,
        "fine_tune": str(plan.fine_tune),
        "optimizer": plan.optimizer,
    }


def resume(plan: Plan, workdir: str):
    """(checkpoints.Store, state): the state an earlier attempt left in the checkpoint folder (its attempts counted),
    or a new one; TrainError when that state is unreadable or was written with other settings."""
    from components.train import checkpoints

    ckpt_dir = plan.checkpoint_dir or storage.join(plan.output_dir, "checkpoints")
    store = checkpoints.Store(ckpt_dir, workdir)
    try:
        state = store.load_state()
        if state is not None:
            checkpoints.check_fingerprint(state, fingerprint(plan), ckpt_dir)
    except ValueError as e:
        raise TrainError(str(e)) from e
    if state is None:
        return store, checkpoints.new_state(fingerprint(plan))
    state["attempts"] = state.get("attempts", 0) + 1
    log(f"resuming after epoch {state['epoch']} from the checkpoint in {ckpt_dir}")
    return store, state


def announce(plan: Plan, session: Session, weights_file: str | None) -> None:
    """The run's one line of what trains on what, and how."""
    log(
        f"{plan.spec.name} at {plan.image_size}px, weights {plan.weights}, fine-tune {plan.fine_tune}, task {plan.task}; "
        f"{plan.n_train} train / {plan.n_val} validation examples; batch {plan.batch_per_replica} x {session.replicas} "
        f"replica(s) on {session.device}{', mixed precision' if session.mixed_precision else ''}; {plan.epochs} epochs "
        f"of {session.steps} steps"
    )
    if weights_file is None and plan.fine_tune.policy in ("head", "last"):
        log(f"warning: --fine-tune {plan.fine_tune} with --weights none trains on top of a random backbone")
