"""CLI of the publish step: `python -m components.publish --source DIR --destination URI`."""
from __future__ import annotations

import sys

from components.common.cli import StepArgumentParser


def build_parser() -> StepArgumentParser:
    p = StepArgumentParser(prog="python -m components.publish",
                           description="Copies a step's output folder to a fixed URI, for later runs that import it "
                                       "from there; published.json is written there last.")
    p.add_argument("--source", required=True, help="The folder to copy (a cluster sweep's filtered examples).")
    p.add_argument("--destination", required=True, help="Where it goes, a local folder or gs:// prefix.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from components.publish import logic

    try:
        record = logic.run(args.source, args.destination)
    except logic.PublishError as e:
        print(f"publish: {e}", file=sys.stderr)
        return 2
    print(f"publish: {record['files']} files to {record['destination']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
