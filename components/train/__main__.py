"""CLI of the train step: python -m components.train --examples DIR --output DIR [options]."""
import sys

from components.common.cli import StepArgumentParser
from components.train.params import SPEC


def build_parser() -> StepArgumentParser:
    """The step's flags from its declaration (params.py)."""
    return SPEC.parser()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.common.errors import refuse
    from components.train import logic
    from components.train.plan import TrainError

    try:
        result = logic.run(args.examples, args.model, **SPEC.values(args))
    except (TrainError, FileNotFoundError) as e:
        return refuse("train", e)
    print(
        f"train: {result['epochs_run']} epochs, best epoch {result['best_epoch']}; model in {result['output_dir']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
