"""CLI of the validate step: python -m components.validate --manifest M --downloads DIR --output DIR."""
import argparse
import sys

from components.validate import logic
from pipeline import defaults


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m components.validate",
        description="Computes TFDV statistics of labels and image metadata and checks them against the kept schema "
        "(statistics.pb, schema.pbtxt, anomalies.pbtxt, anomalies.json, validation_summary.json, statistics.html).",
    )
    p.add_argument("--manifest", required=True, help="Folder written by ingest (manifest.parquet), or that file itself.")
    p.add_argument("--downloads", required=True, help="Folder written by download (ledger.parquet).")
    p.add_argument("--output", required=True, help="Folder with statistics, schema, anomalies and validation_summary.json.")
    p.add_argument(
        "--schema",
        default=defaults.VALIDATE_SCHEMA_URI,
        help='Where the schema is kept between runs (local or gs://; "" to infer each run).',
    )
    p.add_argument(
        "--max-anomalies",
        type=int,
        default=defaults.VALIDATE_MAX_ANOMALIES,
        help="Most anomalies tolerated before the step stops.",
    )
    args = p.parse_args(argv)
    try:
        logic.run(
            manifest_dir=args.manifest,
            downloads_dir=args.downloads,
            output_dir=args.output,
            schema_uri=args.schema,
            max_anomalies=args.max_anomalies,
        )
    except logic.ValidateError as e:
        print(f"validate: {e}", file=sys.stderr)
        return 2
    print(f"\nvalidation written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
