"""KFP wrapper of the push step: an atomic, versioned copy of a blessed model to the registry."""
from kfp import dsl

from components.common import images


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
def push(
    model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    pushed: dsl.Output[dsl.Artifact],
    destination: str,
    model_name: str,
    force: bool,
    keep: int,
):
    """Copies a blessed model with its metrics and blessing to the registry, then moves LATEST.

    Args:
        model: Folder written by train.
        evaluation: Folder written by evaluate (blessing.json, metrics.json).
        pushed: Record of what was pushed and where (push.json).
        destination: Registry root, a local folder or gs:// prefix.
        model_name: Name of the model in the registry.
        force: Push even when the model is not blessed.
        keep: Versions kept in the registry (0 keeps all).
    """
    import os

    from components.push import logic

    os.makedirs(pushed.path, exist_ok=True)
    record = logic.run(
        model_dir=model.path,
        evaluation_dir=evaluation.path,
        output_dir=pushed.path,
        destination=destination,
        model_name=model_name,
        force=force,
        keep=keep,
    )
    print(logic.describe(record))
