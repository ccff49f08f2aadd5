"""The train step's one declaration: what it reads and writes, and its parameters.

The defaults are the demo's recipe: on the face crops of `make run`'s in-the-wild scenes (about 1,400 train images)
they train on 2 CPU cores in about 2 minutes and reach macro F1 0.88 at threshold 0.5 on its test split, 0.895 on a
held-out set of another seed (benchmarks/faces.py). They differ from the study's recipe where a CPU and no ImageNet
weights (no internet) need it:
- compactcnn, a small separable CNN built to learn from scratch (BatchNorm momentum 0.9), at its default 128 px;
  keras.applications' MobileNetV3Small from scratch with the same settings reached 0.69 in 255 s;
- Adam at 0.002: the study's RMSprop at 0.001 reached macro F1 0.75 in the same 16 epochs.
A cluster run names the study's: --preset study-11au (inceptionv3, imagenet weights, head, rmsprop at 0.001).
"""
from components.common.params import Artifact, Param, StepSpec
from components.train.backbones import BACKBONES

TASKS = ("au", "va")
OPTIMIZERS = ("rmsprop", "adam", "adamw")
POS_WEIGHTS = ("none", "sqrt", "balanced")
# BatchNorm momentum of a backbone trained from scratch (weights none): 0.999 barely moves in a short run.
SCRATCH_BN_MOMENTUM = 0.9

SPEC = StepSpec(
    name="train",
    description="Trains an Action Unit detector (or valence/arousal regressor) and exports it: saved_model/, "
                "model.keras, model_config.json, history.json, training_curves.png and logs/. A rerun with the same "
                "arguments resumes from the last epoch's checkpoint.",
    inputs=(Artifact("examples", "Folder written by filter."),),
    outputs=(Artifact("model", "Folder with saved_model/, model.keras, model_config.json, history.json, "
                      "training_curves.png and logs/.", flag="--output"),),
    params=(
        Param("task", str, "au", "au (multi-label Action Units) or va (valence/arousal regression).", choices=TASKS),
        Param("backbone", str, "compactcnn", "keras.applications backbone in lower case (vgg16, inceptionv3, resnet50, "
              "efficientnetv2b0, mobilenetv3small) or compactcnn (small, learns from scratch on a CPU).",
              choices=tuple(BACKBONES)),
        Param("image_size", int, 0, "Input side in pixels (0 follows the backbone: compactcnn 128, inceptionv3 299, "
              "others 224)."),
        Param("weights", str, "none", "imagenet, a weights file path or gs:// URI, or none."),
        Param("fine_tune", str, "full", "Which layers train: head, last:N, full (backbone at a lower learning rate) or "
              "two-stage[:E] (head alone for E epochs, then full)."),
        Param("epochs", int, 16, "Training epochs."),
        Param("batch_size", int, 0, "Batch size per GPU replica (0 follows the backbone: 128; 32 for vgg16 and "
              "compactcnn); the global batch is this times the number of GPUs."),
        Param("optimizer", str, "adam", "rmsprop, adam or adamw.", choices=OPTIMIZERS),
        Param("learning_rate", float, 0.002, "Initial learning rate."),
        Param("seed", int, 0, "Random seed of training."),
        Param("checkpoint_dir", str, "", "Where each epoch's checkpoint goes, local or gs:// (\"\" = checkpoints/ in "
              "the model folder); a restarted train step resumes from it."),
        # Without it the demo overfits: macro F1 0.63 instead of 0.76 (96 px, 20 epochs).
        Param("augment", bool, True, "Random flip, rotation, crop and colour on training images."),
        # The study's recipe and other knobs the DAG does not expose.
        Param("lr_decay", float, 0.94, "Learning-rate factor applied every --lr-decay-epochs (1 = constant).",
              pipeline=None),
        Param("lr_decay_epochs", float, 2.0, "Epochs between learning-rate decays.", pipeline=None),
        Param("l2", float, 4e-5, "L2 penalty on every kernel that trains.", pipeline=None),
        Param("dropout", float, 0.2, "Dropout before the head.", pipeline=None),
        Param("rmsprop_rho", float, 0.9, "RMSprop decay.", pipeline=None),
        Param("rmsprop_momentum", float, 0.9, "RMSprop momentum.", pipeline=None),
        Param("epsilon", float, 1e-7, "Optimizer epsilon.", pipeline=None),
        # A backbone trained from scratch has nothing to protect and learns at the head's rate.
        Param("backbone_lr_multiplier", float, 0.1, "full and two-stage with pretrained weights: the backbone's "
              "learning rate as a fraction of the head's.", pipeline=None),
        Param("patience", int, 5, "Epochs without a better validation loss before training stops.", pipeline=None),
        # "balanced" (the full ratio) over-predicts at the 0.5 threshold evaluate uses: on the demo the best threshold
        # moved to 0.8 and macro F1 at 0.5 fell by 0.05.
        Param("pos_weight", str, "sqrt", "Weight of positive labels per AU from the train split: negatives/positives "
              "(balanced), its square root (sqrt) or none.", choices=POS_WEIGHTS, pipeline=None),
        Param("max_pos_weight", float, 10.0, "Cap of the per-AU positive weight.", pipeline=None),
        Param("bn_momentum", float, 0.0, f"BatchNorm momentum of the backbone (0 = {SCRATCH_BN_MOMENTUM} with "
              "--weights none, the backbone's own otherwise).", pipeline=None),
        Param("cache_mb", float, 2048.0, "A split whose resized images fit in this many MiB is cached in memory.",
              pipeline=None),
        Param("shuffle_buffer", int, 2048, "Examples in the shuffle buffer.", pipeline=None),
        Param("mixed_precision", bool, True, "float16 compute on GPU (never on CPU).", pipeline=None),
        Param("steps_per_epoch", int, 0, "Steps per epoch (0 = one pass over the train split).", pipeline=None),
    ),
)
