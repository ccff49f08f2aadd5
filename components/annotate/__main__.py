"""CLI of the annotate step: python -m components.annotate --manifest M --downloads D --output DIR --model M, or
--images FOLDER|gs://PREFIX instead of the manifest and downloads."""
from __future__ import annotations

import logging
import sys
import tempfile

from components.annotate.params import SPEC
from components.common.cli import StepArgumentParser, setup_logging
from components.common.errors import refuse


# Beam's own warnings on every run that say nothing about the data: a codec this step does not use, and a memory
# figure RunInference cannot take on Linux when its optional model manager is missing.
_BEAM_NOISE = ("crcmod package not found", "Resource module is not available")


class _QuietBeam(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _BEAM_NOISE)


def build_parser() -> StepArgumentParser:
    """The step's flags from its declaration (params.py), then --images (a folder's listing as the manifest)."""
    p = SPEC.parser()
    p.add_argument("--images", metavar="FOLDER", default="",
                   help="Annotate the images under a folder or gs:// prefix instead of a manifest and its downloads "
                        "(their listing is the manifest; no labels, so no agreement).")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.images) == bool(args.manifest):
        parser.error("give either --manifest (with --downloads) or --images")
    from components.common import inference

    inference.quiet_libraries()  # before Beam, TensorFlow and MediaPipe are imported: their banners are no news
    setup_logging()
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietBeam())
    from components.annotate import listing, logic

    try:
        with tempfile.TemporaryDirectory(prefix="annotate-listing-") as tmp:
            manifest, downloads = args.manifest, args.downloads
            if args.images:
                listed = listing.write_manifest(args.images, tmp)
                print(f"{listed['images']} images listed under {args.images}"
                      + (f" ({listed['skipped']} other files left out)" if listed["skipped"] else ""))
                manifest = downloads = tmp
            summary = logic.run(manifest_dir=manifest, downloads_dir=downloads, output_dir=args.annotations,
                                **SPEC.values(args))
    except (logic.AnnotateError, listing.ListingError) as e:
        return refuse("annotate", e)
    print(logic.format_summary(summary))
    print(f"\nannotations: {args.annotations}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
