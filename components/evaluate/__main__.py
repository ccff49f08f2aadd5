"""CLI of the evaluate step: `python -m components.evaluate --examples DIR --model DIR --output DIR`."""
from __future__ import annotations

import sys

from components.common.cli import StepArgumentParser
from components.evaluate.params import SPEC


def build_parser() -> StepArgumentParser:
    """The step's flags from its declaration (params.py)."""
    return SPEC.parser()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from google.api_core import exceptions as gcs_errors

    from components.common.errors import refuse
    from components.common.registry import RegistryError
    from components.common.metric_tables import format_table
    from components.evaluate import logic
    from components.evaluate.scoring import EvaluateError

    try:
        result = logic.run(args.examples, args.model, args.evaluation, manifest=args.manifest, **SPEC.values(args))
    except (EvaluateError, RegistryError) as e:
        return refuse("evaluate", e)
    except OSError as e:
        return refuse("evaluate", f"{e.filename or ''} {e.strerror or e}".strip())
    except gcs_errors.GoogleAPICallError as e:
        return refuse("evaluate", f"Cloud Storage refused: {e.message}")
    blessing = result["blessing"]
    print(format_table(result["metrics"]))
    worst = (result["metrics"].get("slices") or {}).get("worst")
    if worst:  # the whole slice table is in report.md
        print(f"worst slice: {worst['feature']} = {worst['value']} ({worst['examples']} examples), macro F1 "
              f"{worst['macro_f1']:.3f} (every slice in {args.evaluation}/report.md)")
    print()
    print(("BLESSED" if blessing["blessed"] else "NOT BLESSED") + f" (evaluation in {args.evaluation})")
    for reason in blessing["reasons"]:
        print(f"  - {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
