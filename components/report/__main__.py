"""CLI of the report step: `python -m components.report --manifest DIR ... --output report.html`."""
from __future__ import annotations

import os
import sys

from components.common.cli import StepArgumentParser
from components.common.errors import refuse
from components.report.logic import REPORT_INPUTS


def build_parser() -> StepArgumentParser:
    p = StepArgumentParser(prog="python -m components.report",
                           description="Writes the run report, one self-contained HTML page, from every step's output "
                                       "folder. For a local run, `python -m pipeline.report RUN_DIR` does it from the "
                                       "run folder alone.")
    for step, name in REPORT_INPUTS.items():
        p.add_argument(f"--{name}", required=True, help=f"Folder written by {step}.")
    p.add_argument("--output", required=True, help="The HTML file to write.")
    p.add_argument("--run-name", default="", help="The run's name on the page (default: the output's grandparent folder).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from components.report import logic

    folders = {name: getattr(args, name) for name in REPORT_INPUTS.values()}
    for name, folder in folders.items():
        if not os.path.isdir(folder):
            return refuse("report", f"--{name} {folder} is not a folder; give the folder that step wrote")
    print(logic.run(folders, args.output, args.run_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
