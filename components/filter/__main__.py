"""CLI of the filter step: python -m components.filter --examples DIR --output DIR [--aus 1,2,4] [--policy drop]."""
from __future__ import annotations

import argparse
import sys

from components.common import examples
from components.common.cli import StepArgumentParser, setup_logging
from pipeline import defaults


def _aus(text: str) -> str:
    from components.filter import logic

    try:
        logic.parse_aus(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = StepArgumentParser(
        prog="python -m components.filter",
        description="Keeps the chosen Action Units in every example and applies the policy for 999.",
    )
    parser.add_argument("--examples", required=True, help="Folder written by convert.")
    parser.add_argument("--output", required=True,
                        help="Folder with the filtered TFRecord shards and examples_summary.json.")
    parser.add_argument("--aus", type=_aus, default=defaults.FILTER_AUS,
                        help="Comma-separated AU numbers to keep, e.g. \"1,2,4,5,6,9,12,17,20,25,26\" "
                             "(default %(default)s).")
    parser.add_argument("--policy", choices=defaults.FILTER_POLICIES, default=defaults.FILTER_POLICY,
                        help="What to do with 999 (not annotated) in a kept AU: drop, mask or zero "
                             "(default %(default)s).")
    parser.add_argument("--beam-args", default=defaults.FILTER_BEAM_ARGS,
                        help='Apache Beam pipeline options, e.g. --beam-args="--runner=DataflowRunner --project=P" '
                             "(default: the local runner).")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from components.filter import logic

    try:
        summary = logic.run(args.examples, args.output, aus=args.aus, policy=args.policy, beam_args=args.beam_args)
    except (ValueError, FileNotFoundError) as e:
        print(f"filter: error: {e}", file=sys.stderr)
        return 2
    print(examples.format_summary(summary))
    print(f"filtered examples: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
