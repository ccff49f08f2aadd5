"""CLI of the download step: python -m components.download --manifest M --output DIR [options]."""
from __future__ import annotations

import signal
import sys

from components.common.cli import StepArgumentParser
from components.download.params import SPEC


def build_parser() -> StepArgumentParser:
    """The step's flags from its declaration (params.py), then the CLI's own."""
    p = SPEC.parser()
    p.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from components.common.errors import refuse
    from components.download import logic
    from components.common.ledger import LedgerError
    from components.download.store import StoreError

    # A cluster stops a step with SIGTERM: end like Ctrl-C, keeping what was settled.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        logic.run(args.manifest, args.downloads, **SPEC.values(args), progress=not args.no_progress)
    except (logic.DownloadError, LedgerError, StoreError) as e:
        return refuse("download", e)
    except (logic.DownloadInterrupted, KeyboardInterrupt) as e:
        print(f"download: {e or 'interrupted before any work; nothing was lost'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
