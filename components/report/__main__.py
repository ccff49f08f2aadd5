"""CLI of the report step: `python -m components.report --manifest DIR ... --output report.html`."""
from __future__ import annotations

import os
import sys

from components.common.cli import StepArgumentParser
from components.common.errors import refuse
from components.report.params import REPORT_INPUTS, SPEC


def build_parser() -> StepArgumentParser:
    """The step's flags from its declaration (params.py)."""
    return SPEC.parser(description=SPEC.description + " For a local run, `python -m pipeline.report RUN_DIR` does "
                                                      "it from the run folder alone.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from components.report import logic

    folders = {name: getattr(args, name) for name, _ in REPORT_INPUTS}
    for name, folder in folders.items():
        if not os.path.isdir(folder):
            return refuse("report", f"--{name} {folder} is not a folder; give the folder that step wrote")
    print(logic.run(folders, args.page, **SPEC.values(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
