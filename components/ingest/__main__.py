"""CLI of the ingest step: python -m components.ingest --source SHEET --output DIR."""
import argparse
import sys

from components.ingest import logic


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m components.ingest",
        description="Reads the EmotioNet sheet, checks every row and writes the manifest "
        "(manifest.parquet, rejects.csv, ingest_summary.json).",
    )
    p.add_argument("--source", required=True, help="The sheet (.xlsx or .csv, EmotioNet layout), a local path or gs:// URI.")
    p.add_argument("--output", required=True, help="Folder with manifest.parquet, rejects.csv and ingest_summary.json.")
    args = p.parse_args(argv)
    try:
        summary = logic.run(source=args.source, output_dir=args.output)
    except logic.SheetError as e:
        print(f"ingest: {e}", file=sys.stderr)
        return 2
    print(logic.format_summary(summary))
    print(f"\nmanifest written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
