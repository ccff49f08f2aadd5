"""KFP wrapper of the push step: an atomic, versioned copy of a blessed model to the registry."""
from kfp import dsl

from components.common import images
from components.push.params import SPEC


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
@SPEC.document
def push(
    model: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
    pushed: dsl.Output[dsl.Artifact],
    destination: str,
    model_name: str,
    force: bool,
    keep: int,
    infra_validate: bool,
):
    import os

    from components.common.errors import refusals
    from components.push import logic

    os.makedirs(pushed.path, exist_ok=True)
    with refusals("push"):
        record = logic.run(
            model_dir=model.path,
            evaluation_dir=evaluation.path,
            output_dir=pushed.path,
            destination=destination,
            model_name=model_name,
            force=force,
            keep=keep,
            infra_validate=infra_validate,
        )
    print(logic.describe(record))
