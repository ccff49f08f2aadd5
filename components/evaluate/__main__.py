"""CLI of the evaluate step: `python -m components.evaluate --examples DIR --model DIR --output DIR`."""
from __future__ import annotations

import argparse
import sys

from pipeline import defaults


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m components.evaluate",
        description="Scores the model on the test split and decides whether it is blessed.",
    )
    p.add_argument("--examples", required=True, help="Folder written by filter.")
    p.add_argument("--model", required=True, help="Folder written by train.")
    p.add_argument("--output", required=True,
                   help="Folder with metrics.json, blessing.json, report.md and curve PNGs.")
    p.add_argument("--registry", default=defaults.REGISTRY,
                   help="Registry the live model is read from (local folder or gs://); '' compares with none. "
                        "Default: %(default)s.")
    p.add_argument("--model-name", default=defaults.MODEL_NAME,
                   help="Name of the model in the registry. Default: %(default)s.")
    p.add_argument("--min-macro-f1", type=float, default=defaults.EVALUATE_MIN_MACRO_F1,
                   help="Lowest macro F1 that can be blessed. Default: %(default)s.")
    p.add_argument("--min-macro-auc", type=float, default=defaults.EVALUATE_MIN_MACRO_AUC,
                   help="Lowest macro AUC that can be blessed. Default: %(default)s.")
    p.add_argument("--tolerance", type=float, default=defaults.EVALUATE_TOLERANCE,
                   help="How much lower than the live model's macro F1 and AUC a blessed model's may be. "
                        "Default: %(default)s.")
    p.add_argument("--batch-size", type=int, default=defaults.EVALUATE_BATCH_SIZE,
                   help="Images per call of the model's serving signature. Default: %(default)s.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from google.api_core import exceptions as gcs_errors

    from components.evaluate import logic
    from components.push.registry import RegistryError

    try:
        result = logic.run(
            examples_dir=args.examples,
            model_dir=args.model,
            output_dir=args.output,
            registry=args.registry,
            model_name=args.model_name,
            min_macro_f1=args.min_macro_f1,
            min_macro_auc=args.min_macro_auc,
            tolerance=args.tolerance,
            batch_size=args.batch_size,
        )
    except (logic.EvaluateError, RegistryError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"evaluate: {e.filename or ''} {e.strerror or e}".strip(), file=sys.stderr)
        return 2
    except gcs_errors.GoogleAPICallError as e:
        print(f"evaluate: Cloud Storage refused: {e.message}", file=sys.stderr)
        return 2
    blessing = result["blessing"]
    print(logic.format_table(result["metrics"]))
    print()
    print(("BLESSED" if blessing["blessed"] else "NOT BLESSED") + f" (evaluation in {args.output})")
    for reason in blessing["reasons"]:
        print(f"  - {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
