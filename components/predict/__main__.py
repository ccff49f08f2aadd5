"""CLI: `python -m components.predict --model URI IMAGE...` prints each image's AU probabilities from a pushed model."""
from __future__ import annotations

import argparse
import json
import sys

from pipeline import defaults


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m components.predict",
        description="Prints the Action Unit probabilities of face images from a pushed model.",
    )
    p.add_argument(
        "--model",
        default=f"{defaults.REGISTRY}/{defaults.MODEL_NAME}",
        help="Registry model root (<destination>/<model_name>, follows LATEST), a version folder, or a model folder "
             "with saved_model/; local or gs://. Default: %(default)s.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="Image files (local or gs://), any format PIL reads.")
    p.add_argument("--threshold", type=float, default=None,
                   help="One threshold for every AU instead of the tuned per-AU ones stored with the model.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from google.api_core import exceptions as gcs_errors

    from components.predict import logic

    try:
        result = logic.predict(args.model, args.images, threshold=args.threshold)
    except logic.PredictError as e:
        print(f"predict: {e}", file=sys.stderr)
        return 2
    except gcs_errors.GoogleAPICallError as e:
        print(f"predict: Cloud Storage refused: {e.message}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else logic.format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
