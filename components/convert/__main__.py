"""CLI of the convert step: python -m components.convert --manifest M --downloads DIR --output DIR."""
from __future__ import annotations

import sys

from components.common import examples
from components.common import faces as face_contract
from components.common.cli import StepArgumentParser, setup_logging
from components.common.errors import refuse
from components.convert.params import SPEC


def build_parser() -> StepArgumentParser:
    """The step's flags from its declaration (params.py), the face settings included."""
    return SPEC.parser()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from components.convert import logic

    # logic.run takes the face settings as one FaceSettings, the other parameters by name.
    face_names = {p.name for p in face_contract.FACE_PARAMS}
    params = {name: value for name, value in SPEC.values(args).items() if name not in face_names}
    try:
        summary = logic.run(
            manifest_dir=args.manifest,
            downloads_dir=args.downloads,
            output_dir=args.examples,
            faces=face_contract.from_arguments(args),
            **params,
        )
    except (ValueError, FileNotFoundError) as e:
        return refuse("convert", e)
    print(examples.format_summary(summary))
    print("faces: " + face_contract.format_counters(summary["counters"]))
    print(f"examples: {args.examples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
