"""KFP wrapper of the train step: fine-tunes a Keras backbone on the examples."""
from kfp import dsl

from components.common import images


@dsl.component(base_image=images.GPU_IMAGE, install_kfp_package=False)
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
    """Trains an Action Unit detector (or valence/arousal regressor) and exports it.

    Args:
        examples: Folder written by filter.
        model: Folder with saved_model/, model.keras, model_config.json, history.json, training_curves.png and logs/.
        task: au (multi-label Action Units) or va (valence/arousal regression).
        backbone: keras.applications backbone in lower case (vgg16, inceptionv3, resnet50, efficientnetv2b0, mobilenetv3small) or compactcnn (small, learns from scratch on a CPU).
        image_size: Input side in pixels (0 follows the backbone).
        weights: imagenet, a weights file path or gs:// URI, or none.
        fine_tune: Which layers train: head, last:N, full (backbone at a lower learning rate) or two-stage[:E] (head alone for E epochs, then full).
        epochs: Training epochs.
        batch_size: Batch size per GPU replica (0 follows the backbone: 128; 32 for vgg16 and compactcnn); the global batch is this times the number of GPUs.
        optimizer: rmsprop, adam or adamw.
        learning_rate: Initial learning rate.
        seed: Random seed.
        checkpoint_dir: Where each epoch's checkpoint goes, local or gs:// ('' = checkpoints/ in the output folder); a rerun resumes from it.
        augment: Random flip, rotation, crop and colour on training images.
    """
    from components.train import logic

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
