"""CLI of the push step: `python -m components.push --model DIR --evaluation DIR --destination R`."""
from __future__ import annotations

import argparse
import sys

from pipeline import defaults


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m components.push",
        description="Copies a blessed model with its metrics and blessing to the registry, then moves LATEST.",
    )
    p.add_argument("--model", required=True, help="Folder written by train.")
    p.add_argument("--evaluation", required=True, help="Folder written by evaluate (blessing.json, metrics.json).")
    p.add_argument("--destination", required=True, help="Registry root, a local folder or gs:// prefix.")
    p.add_argument("--model-name", default=defaults.MODEL_NAME,
                   help="Name of the model in the registry. Default: %(default)s.")
    p.add_argument("--force", action="store_true", default=defaults.PUSH_FORCE,
                   help="Push even when the model is not blessed.")
    p.add_argument("--keep", type=int, default=defaults.PUSH_KEEP,
                   help="Versions kept in the registry (0 keeps all). Default: %(default)s.")
    p.add_argument("--output", default="",
                   help="Folder to write push.json to, the record of what was pushed and where (optional).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from google.api_core import exceptions as gcs_errors

    from components.push import logic
    from components.push.registry import RegistryError

    try:
        record = logic.run(
            model_dir=args.model,
            evaluation_dir=args.evaluation,
            output_dir=args.output or None,
            destination=args.destination,
            model_name=args.model_name,
            force=args.force,
            keep=args.keep,
        )
    except (logic.PushError, RegistryError) as e:
        print(f"push: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"push: {e.filename or ''} {e.strerror or e}".strip(), file=sys.stderr)
        return 2
    except gcs_errors.GoogleAPICallError as e:
        print(f"push: Cloud Storage refused: {e.message}", file=sys.stderr)
        return 2
    print(logic.describe(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
