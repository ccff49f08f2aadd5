"""CLI of the filter step: python -m components.filter --examples DIR --output DIR [--aus 1,2,4] [--policy drop]."""
from __future__ import annotations

import sys

from components.common import examples
from components.common.cli import StepArgumentParser, setup_logging
from components.common.errors import refuse
from components.filter.params import SPEC


def build_parser() -> StepArgumentParser:
    """The step's flags from its declaration (params.py)."""
    return SPEC.parser()


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from components.filter import logic

    try:
        logic.parse_aus(args.aus)
    except ValueError as e:  # a bad AU list is a bad flag: argparse's one line and exit 2, as for --policy
        parser.error(f"argument --aus: {e}")
    setup_logging()
    try:
        summary = logic.run(args.examples, args.filtered, **SPEC.values(args))
    except (ValueError, FileNotFoundError) as e:
        return refuse("filter", e)
    print(examples.format_summary(summary))
    print(f"filtered examples: {args.filtered}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
