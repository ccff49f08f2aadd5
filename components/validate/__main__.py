"""CLI of the validate step: python -m components.validate --manifest M --downloads DIR --output DIR."""
import sys

from components.common.cli import StepArgumentParser
from components.common.errors import refuse
from components.validate import logic
from components.validate.params import SPEC


def build_parser() -> StepArgumentParser:
    """The step's flags from its declaration (params.py)."""
    return SPEC.parser()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logic.run(manifest_dir=args.manifest, downloads_dir=args.downloads, output_dir=args.validation,
                  **SPEC.values(args))
    except logic.ValidateError as e:
        return refuse("validate", e)
    print(f"\nvalidation written to {args.validation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
