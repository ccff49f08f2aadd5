"""CLI of the download step: python -m components.download --manifest M --output DIR [options]."""
from __future__ import annotations

import argparse
import signal
import sys

from pipeline import defaults


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m components.download",
        description="Fetches every image of the manifest with retries and keeps a per-URL ledger. "
        "Rerunning with the same --output (or --store) resumes: only never-tried URLs and transient failures are fetched.",
    )
    p.add_argument("--manifest", required=True, help="Folder written by ingest (manifest.parquet).")
    p.add_argument("--output", required=True, help="Folder with images/, ledger.parquet and download_summary.json.")
    p.add_argument("--store", default=defaults.DOWNLOAD_STORE,
                   help='Local folder or gs:// prefix keeping images and ledger across runs ("" for none).')
    p.add_argument("--workers", type=int, default=defaults.DOWNLOAD_WORKERS, help="Parallel downloads.")
    p.add_argument("--timeout", type=float, default=defaults.DOWNLOAD_TIMEOUT,
                   help="Seconds allowed to connect and for each read of a request; its total deadline is 3 x this.")
    p.add_argument("--max-attempts", type=int, default=defaults.DOWNLOAD_MAX_ATTEMPTS,
                   help="Attempts per URL for transient failures.")
    p.add_argument("--max-bytes", type=int, default=defaults.DOWNLOAD_MAX_BYTES, help="Largest body accepted, in bytes.")
    p.add_argument("--allow-private", action=argparse.BooleanOptionalAction, default=defaults.DOWNLOAD_ALLOW_PRIVATE,
                   help="Allow private and loopback addresses (True for the demo, False on a cluster).")
    p.add_argument("--deadline", type=float, default=0.0,
                   help=f"Total seconds for one request, redirects included (0 = {defaults.DOWNLOAD_DEADLINE_FACTOR:g} x --timeout).")
    p.add_argument("--per-host", type=int, default=defaults.DOWNLOAD_PER_HOST, help="Connections at once to one host.")
    p.add_argument("--max-pixels", type=int, default=defaults.DOWNLOAD_MAX_PIXELS,
                   help="Largest width x height accepted (decompression bombs are refused before decoding).")
    p.add_argument("--max-redirects", type=int, default=defaults.DOWNLOAD_MAX_REDIRECTS, help="Redirects followed per URL.")
    p.add_argument("--retry-permanent", action="store_true",
                   help="Retry permanent failures too (404, other 4xx, not_image, ...), now and on later runs.")
    p.add_argument("--backoff", type=float, default=defaults.DOWNLOAD_BACKOFF,
                   help="Base of the exponential backoff between retries, in seconds (full jitter).")
    p.add_argument("--backoff-max", type=float, default=defaults.DOWNLOAD_BACKOFF_MAX, help="Longest backoff, in seconds.")
    p.add_argument("--retry-after-max", type=float, default=defaults.DOWNLOAD_RETRY_AFTER_MAX,
                   help="Longest Retry-After honoured in this run, in seconds; a longer one waits for the next run.")
    p.add_argument("--min-ok", type=float, default=defaults.DOWNLOAD_MIN_OK,
                   help="Stop with an error when fewer than this share of the URLs gave an image, naming the top "
                        "error classes (always when none did; default %(default)s).")
    p.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from components.download import logic
    from components.download.ledger import LedgerError
    from components.download.store import StoreError

    # A cluster stops a step with SIGTERM: end like Ctrl-C, keeping what was settled.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        logic.run(
            manifest_dir=args.manifest, output_dir=args.output, store=args.store, workers=args.workers,
            timeout=args.timeout, max_attempts=args.max_attempts, max_bytes=args.max_bytes,
            allow_private=args.allow_private, deadline=args.deadline, per_host=args.per_host,
            max_pixels=args.max_pixels, max_redirects=args.max_redirects, retry_permanent=args.retry_permanent,
            backoff=args.backoff, backoff_max=args.backoff_max, retry_after_max=args.retry_after_max,
            progress=not args.no_progress, min_ok=args.min_ok,
        )
    except (logic.DownloadError, LedgerError, StoreError) as e:
        print(f"download: {e}", file=sys.stderr)
        return 2
    except (logic.DownloadInterrupted, KeyboardInterrupt) as e:
        print(f"download: {e or 'interrupted before any work; nothing was lost'}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
