"""CLI of the convert step: python -m components.convert --manifest M --downloads DIR --output DIR."""
from __future__ import annotations

import argparse
import sys

from components.common import examples
from components.common import faces as face_contract
from components.common.cli import StepArgumentParser, setup_logging
from pipeline import defaults


def build_parser() -> argparse.ArgumentParser:
    parser = StepArgumentParser(
        prog="python -m components.convert",
        description="Converts the downloaded images and their labels to train/validation/test TFRecord shards "
                    "(Apache Beam; locally Beam's FnApiRunner on every core).",
    )
    parser.add_argument("--manifest", required=True, help="Folder written by ingest (or its manifest.parquet).")
    parser.add_argument("--downloads", required=True, help="Folder written by download.")
    parser.add_argument("--output", required=True,
                        help="Folder with the TFRecord shards and examples_summary.json (local or gs://).")
    parser.add_argument("--validation-fraction", type=float, default=defaults.CONVERT_VALIDATION_FRACTION,
                        help="Share of images in the validation split (default %(default)s).")
    parser.add_argument("--test-fraction", type=float, default=defaults.CONVERT_TEST_FRACTION,
                        help="Share of images in the test split (default %(default)s).")
    parser.add_argument("--max-side", type=int, default=defaults.CONVERT_MAX_SIDE,
                        help="Longest image side after resizing (0 keeps the size; default %(default)s).")
    parser.add_argument("--beam-args", default=defaults.CONVERT_BEAM_ARGS,
                        help='Apache Beam pipeline options, e.g. --beam-args="--runner=DataflowRunner --project=P '
                             '--region=R --temp_location=gs://B/tmp" ("" for the local runner).')
    face_contract.add_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from components.convert import logic

    try:
        settings = face_contract.from_arguments(args)
        summary = logic.run(
            manifest_dir=args.manifest,
            downloads_dir=args.downloads,
            output_dir=args.output,
            validation_fraction=args.validation_fraction,
            test_fraction=args.test_fraction,
            max_side=args.max_side,
            beam_args=args.beam_args,
            faces=settings,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    print(examples.format_summary(summary))
    print("faces: " + face_contract.format_counters(summary["counters"]))
    print(f"examples: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
