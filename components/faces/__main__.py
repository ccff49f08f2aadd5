"""CLI: `python -m components.faces IMAGE... [--output DIR]` finds, aligns and crops the face of each image, as convert does."""
from __future__ import annotations

import json
import os
import sys

from components.common import faces as contract
from components.common.cli import StepArgumentParser
from components.faces.params import SPEC


def build_parser() -> StepArgumentParser:
    """The CLI's flags from its declaration (params.py), then the images and the options that are not settings."""
    p = SPEC.parser()
    images = SPEC.inputs[0]
    p.add_argument(images.name, nargs="+", metavar="IMAGE", help=images.help)
    p.add_argument("--json", action="store_true", help="Print one JSON object per image instead of a line.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from components.common import imaging, storage
    from components.common.facefinder.crop import prepare

    try:
        settings = contract.from_arguments(args)
    except ValueError as e:
        print(f"faces: error: {e}", file=sys.stderr)
        return 2
    if args.output:
        os.makedirs(args.output, exist_ok=True)
    failed = 0
    for uri in args.images:
        if not storage.exists(uri):
            print(f"faces: {uri} does not exist", file=sys.stderr)
            failed += 1
            continue
        try:
            result = prepare(storage.read_bytes(uri), settings)
        except imaging.UndecodableImage as e:
            print(f"faces: {uri} is not an image that can be read ({e})", file=sys.stderr)
            failed += 1
            continue
        crop = ""
        if args.output and result.jpeg is not None:
            crop = os.path.join(args.output, os.path.splitext(os.path.basename(uri))[0] + ".face.jpg")
            with open(crop, "wb") as f:
                f.write(result.jpeg)
        if args.json:
            print(json.dumps({"image": uri, "status": result.status, "reason": result.reason,
                              "count": result.count, "crop": crop or None, "angle": round(result.angle, 2),
                              **({"box": [round(v, 1) for v in result.face.box],
                                  "landmarks": [round(float(v), 1) for v in result.face.landmarks.reshape(-1)],
                                  "score": round(result.face.score, 4)} if result.face is not None else {})}))
        else:
            print(f"{uri}: {result.describe()}" + (f" -> {crop}" if crop else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
