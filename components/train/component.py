"""KFP wrapper of the train step: fine-tunes a Keras backbone on the examples."""
from kfp import dsl

from components.common import images
from components.train.params import SPEC


@dsl.component(base_image=images.GPU_IMAGE, install_kfp_package=False)
@SPEC.document
def train(
    examples: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
    task: str,
    backbone: str,
    image_size: int,
    weights: str,
    fine_tune: str,
    epochs: int,
    batch_size: int,
    optimizer: str,
    learning_rate: float,
    seed: int,
    checkpoint_dir: str,
    augment: bool,
):
    from components.common.errors import refusals
    from components.train import logic

    with refusals("train"):
        logic.run(
            examples_dir=examples.path,
            output_dir=model.path,
            task=task,
            backbone=backbone,
            image_size=image_size,
            weights=weights,
            fine_tune=fine_tune,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            learning_rate=learning_rate,
            seed=seed,
            checkpoint_dir=checkpoint_dir,
            augment=augment,
            progress=True,  # progress lines: the local console draws its bar from them
        )
