"""CLI: `python -m components.faces IMAGE... [--output DIR]` finds, aligns and crops the face of each image, as convert does."""
from __future__ import annotations

import json
import os
import sys

from components.common import faces as contract
from components.common.cli import StepArgumentParser


def build_parser() -> StepArgumentParser:
    p = StepArgumentParser(
        prog="python -m components.faces",
        description="Finds the largest face of each image (MediaPipe BlazeFace), turns it so the eyes are level and "
                    "crops it with a margin: what convert does to every training image, and predict to a new one.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="Image files (local or gs://), any format Pillow reads.")
    p.add_argument("--output", default="", help="Folder for the crops, <name>.face.jpg (default: none written).")
    contract.add_arguments(p, mode=False)
    p.add_argument("--json", action="store_true", help="Print one JSON object per image instead of a line.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from components.common import storage
    from components.convert import imaging
    from components.faces import logic

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
            result = logic.prepare(storage.read_bytes(uri), settings)
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
