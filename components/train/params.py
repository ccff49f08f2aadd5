"""The train step's one declaration: what it reads and writes, and its parameters.

The defaults are a recipe for real faces on one GPU (README, "Defaults for real photos"): ResNet-50 with ImageNet
weights at 224 px, fine-tuned whole, AdamW, batch 64, 20 epochs, as ME-GraphAU (Luo et al., IJCAI 2022) trains its
ResNet-50 (BP4D F1 64.7); its backbone learns at ME-GraphAU's 1e-4 (--backbone-lr-multiplier 0.1 of the head's 1e-3).
The study fine-tuned ImageNet-pretrained Inception and VGG: --preset study-11au.
The demo's recipe (compactcnn from scratch, Adam at 0.002, 16 epochs: 2 CPU cores, no internet) is the preset `demo`
of pipeline/defaults.py, which `pipeline.py run` applies to the demo set; the parameters the DAG does not expose
(lr decay, L2, dropout, pos_weight...) are the same for both.
"""
from components.common.model import TASKS
from components.common.params import Artifact, Param, StepSpec
from components.train.backbones import BACKBONES

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
        Param("backbone", str, "resnet50", "keras.applications backbone in lower case (vgg16, inceptionv3, resnet50, "
              "efficientnetv2b0, mobilenetv3small) or compactcnn (small, learns from scratch on a CPU).",
              choices=tuple(BACKBONES)),
        Param("image_size", int, 0, "Input side in pixels (0 follows the backbone: compactcnn 128, inceptionv3 299, "
              "others 224)."),
        Param("weights", str, "imagenet", "imagenet, a weights file path or gs:// URI, or none."),
        Param("fine_tune", str, "full", "Which layers train: head, last:N, full (backbone at a lower learning rate) or "
              "two-stage[:E] (head alone for E epochs, then full)."),
        Param("epochs", int, 20, "Training epochs."),
        Param("batch_size", int, 64, "Batch size per GPU replica (0 follows the backbone: 128; 32 for vgg16 and "
              "compactcnn); the global batch is this times the number of GPUs."),
        Param("optimizer", str, "adamw", "rmsprop, adam or adamw.", choices=OPTIMIZERS),
        Param("learning_rate", float, 0.001, "Initial learning rate of the head (a pretrained backbone "
              "fine-tuned full or two-stage learns at a tenth of it)."),
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
