"""CLI of the ingest step: python -m components.ingest --source SHEET --output DIR."""
import sys

from components.common.cli import StepArgumentParser
from components.common.errors import refuse
from components.ingest import logic
from components.ingest.params import SPEC


def build_parser() -> StepArgumentParser:
    """The step's flags from its declaration (params.py)."""
    return SPEC.parser()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = logic.run(output_dir=args.manifest, **SPEC.values(args))
    except logic.SheetError as e:
        return refuse("ingest", e)
    print(logic.format_summary(summary))
    print(f"\nmanifest written to {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
