"""CLI of the publish step: `python -m components.publish --source DIR --destination URI`."""
from __future__ import annotations

import sys

from components.common.cli import StepArgumentParser
from components.common.errors import refuse
from components.publish.params import SPEC


def build_parser() -> StepArgumentParser:
    """The step's flags from its declaration (params.py)."""
    return SPEC.parser()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from components.publish import logic

    try:
        record = logic.run(args.source, **SPEC.values(args))
    except logic.PublishError as e:
        return refuse("publish", e)
    print(f"publish: {record['files']} files to {record['destination']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
