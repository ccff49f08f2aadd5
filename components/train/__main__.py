"""CLI of the train step: python -m components.train --examples DIR --output DIR [options]."""
import argparse
import sys

from pipeline import defaults


def _parser() -> argparse.ArgumentParser:
    from components.train import backbones

    p = argparse.ArgumentParser(
        prog="python -m components.train",
        description="Trains an Action Unit detector (or valence/arousal regressor) and exports it: saved_model/, "
        "model.keras, model_config.json, history.json, training_curves.png and logs/. A rerun with the same "
        "arguments resumes from the last epoch's checkpoint.",
    )
    p.add_argument("--examples", required=True, help="Folder written by filter.")
    p.add_argument(
        "--output",
        required=True,
        help="Folder with saved_model/, model.keras, model_config.json, history.json, training_curves.png and logs/.",
    )
    p.add_argument("--task", default=defaults.TRAIN_TASK, choices=["au", "va"],
                   help="au (multi-label Action Units) or va (valence/arousal regression).")
    p.add_argument("--backbone", default=defaults.TRAIN_BACKBONE, choices=list(backbones.BACKBONES),
                   help="keras.applications backbone in lower case (vgg16, inceptionv3, resnet50, efficientnetv2b0, "
                   "mobilenetv3small) or compactcnn (small, learns from scratch on a CPU).")
    p.add_argument("--image-size", type=int, default=defaults.TRAIN_IMAGE_SIZE,
                   help="Input side in pixels (0 follows the backbone).")
    p.add_argument("--weights", default=defaults.TRAIN_WEIGHTS,
                   help="imagenet, a weights file path or gs:// URI, or none.")
    p.add_argument("--fine-tune", default=defaults.TRAIN_FINE_TUNE,
                   help="Which layers train: head, last:N, full (backbone at a lower learning rate) or two-stage[:E] "
                   "(head alone for E epochs, then full).")
    p.add_argument("--epochs", type=int, default=defaults.TRAIN_EPOCHS, help="Training epochs.")
    p.add_argument("--batch-size", type=int, default=defaults.TRAIN_BATCH_SIZE,
                   help="Batch size per GPU replica (0 follows the backbone: 128; 32 for vgg16 and compactcnn); "
                   "the global batch is this times the number of GPUs.")
    p.add_argument("--optimizer", default=defaults.TRAIN_OPTIMIZER, choices=["rmsprop", "adam", "adamw"],
                   help="rmsprop, adam or adamw.")
    p.add_argument("--learning-rate", type=float, default=defaults.TRAIN_LEARNING_RATE,
                   help="Initial learning rate.")
    p.add_argument("--seed", type=int, default=defaults.TRAIN_SEED, help="Random seed.")
    p.add_argument("--checkpoint-dir", default=defaults.TRAIN_CHECKPOINT_DIR,
                   help="Where each epoch's checkpoint goes, local or gs:// ('' = checkpoints/ in the output "
                   "folder); a rerun resumes from it.")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=defaults.TRAIN_AUGMENT,
                   help="Random flip, rotation, crop and colour on training images.")
    g = p.add_argument_group("the study's recipe and other knobs")
    g.add_argument("--lr-decay", type=float, default=defaults.TRAIN_LR_DECAY,
                   help="Learning-rate factor applied every --lr-decay-epochs (1 = constant).")
    g.add_argument("--lr-decay-epochs", type=float, default=defaults.TRAIN_LR_DECAY_EPOCHS,
                   help="Epochs between learning-rate decays.")
    g.add_argument("--l2", type=float, default=defaults.TRAIN_L2, help="L2 penalty on every kernel that trains.")
    g.add_argument("--dropout", type=float, default=defaults.TRAIN_DROPOUT, help="Dropout before the head.")
    g.add_argument("--rmsprop-rho", type=float, default=defaults.TRAIN_RMSPROP_RHO, help="RMSprop decay.")
    g.add_argument("--rmsprop-momentum", type=float, default=defaults.TRAIN_RMSPROP_MOMENTUM, help="RMSprop momentum.")
    g.add_argument("--epsilon", type=float, default=defaults.TRAIN_EPSILON, help="Optimizer epsilon.")
    g.add_argument("--backbone-lr-multiplier", type=float, default=defaults.TRAIN_BACKBONE_LR_MULTIPLIER,
                   help="full and two-stage: the backbone's learning rate as a fraction of the head's.")
    g.add_argument("--patience", type=int, default=defaults.TRAIN_PATIENCE,
                   help="Epochs without a better validation loss before training stops.")
    g.add_argument("--pos-weight", default=defaults.TRAIN_POS_WEIGHT, choices=["none", "sqrt", "balanced"],
                   help="Weight of positive labels per AU from the train split: negatives/positives (balanced), "
                   "its square root (sqrt) or none.")
    g.add_argument("--max-pos-weight", type=float, default=defaults.TRAIN_MAX_POS_WEIGHT,
                   help="Cap of the per-AU positive weight.")
    g.add_argument("--bn-momentum", type=float, default=None,
                   help=f"BatchNorm momentum of the backbone (default {defaults.TRAIN_SCRATCH_BN_MOMENTUM} with "
                   "--weights none, the backbone's own otherwise).")
    g.add_argument("--cache-mb", type=float, default=defaults.TRAIN_CACHE_MB,
                   help="A split whose resized images fit in this many MiB is cached in memory.")
    g.add_argument("--shuffle-buffer", type=int, default=defaults.TRAIN_SHUFFLE_BUFFER,
                   help="Examples in the shuffle buffer.")
    g.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=defaults.TRAIN_MIXED_PRECISION,
                   help="float16 compute on GPU (never on CPU).")
    g.add_argument("--steps-per-epoch", type=int, default=0,
                   help="Steps per epoch (0 = one pass over the train split).")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from components.train import logic

    try:
        result = logic.run(
            examples_dir=args.examples,
            output_dir=args.output,
            task=args.task,
            backbone=args.backbone,
            image_size=args.image_size,
            weights=args.weights,
            fine_tune=args.fine_tune,
            epochs=args.epochs,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            learning_rate=args.learning_rate,
            seed=args.seed,
            checkpoint_dir=args.checkpoint_dir,
            augment=args.augment,
            lr_decay=args.lr_decay,
            lr_decay_epochs=args.lr_decay_epochs,
            l2=args.l2,
            dropout=args.dropout,
            rmsprop_rho=args.rmsprop_rho,
            rmsprop_momentum=args.rmsprop_momentum,
            epsilon=args.epsilon,
            backbone_lr_multiplier=args.backbone_lr_multiplier,
            patience=args.patience,
            pos_weight=args.pos_weight,
            max_pos_weight=args.max_pos_weight,
            bn_momentum=args.bn_momentum,
            cache_mb=args.cache_mb,
            shuffle_buffer=args.shuffle_buffer,
            mixed_precision=args.mixed_precision,
            steps_per_epoch=args.steps_per_epoch,
        )
    except (logic.TrainError, FileNotFoundError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    print(
        f"train: {result['epochs_run']} epochs, best epoch {result['best_epoch']}; model in {result['output_dir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
