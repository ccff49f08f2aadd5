"""CLI of the push step: `python -m components.push --model DIR --evaluation DIR --destination R`."""
from __future__ import annotations

import sys

from components.common.cli import StepArgumentParser
from components.push.params import SPEC


def build_parser() -> StepArgumentParser:
    """The step's flags from its declaration (params.py)."""
    return SPEC.parser()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from google.api_core import exceptions as gcs_errors

    from components.common.errors import refuse
    from components.common.registry import RegistryError
    from components.push import logic

    try:
        record = logic.run(args.model, args.evaluation, args.pushed or None, **SPEC.values(args))
    except (logic.PushError, RegistryError) as e:
        return refuse("push", e)
    except OSError as e:
        return refuse("push", f"{e.filename or ''} {e.strerror or e}".strip())
    except gcs_errors.GoogleAPICallError as e:
        return refuse("push", f"Cloud Storage refused: {e.message}")
    print(logic.describe(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
