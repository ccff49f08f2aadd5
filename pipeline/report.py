"""`python -m pipeline.report RUN_DIR`: writes a finished local run's report.html again from its run folder alone."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    """python -m pipeline.report RUN_DIR: (re)writes the report of a finished local run from its run_summary.json."""
    from pipeline.local import load_result, write_report

    p = argparse.ArgumentParser(prog="python -m pipeline.report", description=main.__doc__)
    p.add_argument("run_dir", help="A run folder written by `pipeline.py run` (it holds run_summary.json).")
    args = p.parse_args(argv)
    try:
        result = load_result(args.run_dir)
    except (OSError, ValueError, KeyError) as e:
        print(f"pipeline.report: {args.run_dir} holds no readable run_summary.json ({e}); give a folder written "
              "by `python pipeline.py run`", file=sys.stderr)
        return 2
    print(write_report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
