"""CLI of the demo world: `generate` a synthetic face set, `serve` it on 127.0.0.1 with the web's faults and an EmotioNet sheet."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from pipeline import defaults
from pipeline.demo.generate import DEFAULT_SCENE, SCENES

EPILOG = """\
examples:
  python -m pipeline.demo generate --out runs/demo --size 2000 --seed 0
  python -m pipeline.demo generate --out runs/demo-portrait --scene portrait
  python -m pipeline.demo serve --dir runs/demo            # prints the base URL and the sheet path
  python pipeline.py run --source runs/demo/sheet.xlsx   # in another shell, while serve runs

generate writes DIR/images/face-NNNNN.{jpg,png,gif,webp} (JPEG, CMYK JPEG, PNG, RGBA and palette
PNG, GIF, WebP), DIR/labels.parquet (the ground truth: name, AU1..AU60, valence, arousal, and
where the face is: face_x0 face_y0 face_x1 face_y1, tilt, grey, jpeg_quality, occluder,
faces_in_scene) and DIR/demo_summary.json; a folder that already holds the same size, seed and
scene is left as it is.

--scene wild (the default) draws web photos: 320..640 px each way, cluttered (rooms, streets,
parks, stripes, shapes, lights), the face 15-45% of the shorter side; ~25% tilted 10-30 degrees,
~10% grey, ~10% low-quality JPEG (quality 8-25), ~12% partly hidden (sunglasses, cap, scarf,
hand, mug: the AUs they hide are 999, as EmotioNet marks occluded AUs), ~3% with a smaller
bystander, ~1% with no face at all (its box is NaN). --scene portrait draws the face filling a
--image-size square, as the demo did before. --scene small-faces draws the wild conditions in
pictures of 480..1024 px each way whose face is 10-22% of the shorter side (48-225 px): group
photos and half-body shots, where the face finder needs its tiles.

serve binds 127.0.0.1 only and writes the sheet (no header: URL, AU1..AU60, valence, arousal)
whose URLs point at it, plus SHEET.faults.csv: each row's route and the error_class the download
step should record. With faults (the default) ~11% of the URLs fail as in the study (HTTP 404,
other 4xx, 5xx, redirect loops, DNS failures under the reserved .invalid TLD, timeouts, resets,
refused connections, TLS), a few fail once then succeed (503, 429 + Retry-After), a few are odd
(HTML served as image/jpeg, truncated, too large). It serves until Ctrl-C.
"""


def _generate(args) -> int:
    from pipeline.demo import generate_demo

    summary = generate_demo(args.out, size=args.size, seed=args.seed, image_size=args.image_size,
                            workers=args.workers, scene=args.scene)
    state = "already there" if summary["cached"] else f"written in {summary['seconds']} s"
    print(f"{summary['size']} faces (seed {summary['seed']}, {summary['scene']} scenes) in {args.out}: {state}")
    print("AU prevalence: " + ", ".join(f"AU{a} {p:.0%}" for a, p in summary["prevalence"].items()))
    print("formats: " + json.dumps(summary["formats"]))
    print("conditions: " + json.dumps(summary["conditions"]))
    size = summary["face_size"]
    if size["min_px"] is not None:
        print(f"face size: {size['min_px']}-{size['max_px']} px, {size['min_share']:.0%}-{size['max_share']:.0%} "
              "of the image's shorter side")
    return 0


def _serve(args) -> int:
    from pipeline.demo import DemoServer, fault_table_path, write_sheet

    sheet = args.sheet or os.path.join(args.dir, defaults.DEMO_SHEET)
    stop = threading.Event()
    with DemoServer(args.dir, faults=not args.no_faults, seed=args.seed, port=args.port,
                    stall_seconds=args.stall_seconds, verbose=args.verbose) as srv:
        # SIGTERM (docker stop, kill) ends the server as cleanly as Ctrl-C does. Ctrl-C (SIGINT) is made to raise
        # even where it came in ignored: a shell starts a background command (`cmd &`, a CI script) with SIGINT
        # ignored, and Python then leaves it so, and the server could not be stopped with it.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, signal.default_int_handler)
        write_sheet(args.dir, srv, sheet, seed=args.seed)
        print(f"serving {len(srv.images)} images of {args.dir} at {srv.base_url}", flush=True)
        if srv.faults:
            print(f"TLS listener (self-signed) at {srv.tls_base_url}; refused port {srv.refused_port}", flush=True)
        print(f"sheet: {sheet}", flush=True)
        print(f"expected outcome per row: {fault_table_path(sheet)}", flush=True)
        print("Ctrl-C stops the server.", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    print("demo server stopped", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.demo",
        description="The demo world: synthetic faces whose 11 Action Units are visible, in cluttered web photos, served on 127.0.0.1 "
                    "with the web's faults, and an EmotioNet-format sheet of their URLs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="Write a synthetic face set and its ground-truth labels.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--out", default=defaults.DEMO_DIR, help="Folder for images/, labels.parquet and demo_summary.json.")
    g.add_argument("--size", type=int, default=defaults.DEMO_SIZE, help="Number of images.")
    g.add_argument("--seed", type=int, default=defaults.DEMO_SEED, help="Seed: the same seed and size give the same bytes.")
    g.add_argument("--scene", choices=SCENES, default=DEFAULT_SCENE,
                   help="wild: the face small in a cluttered web photo, some tilted, grey, low-quality, partly hidden "
                        "(default); portrait: the face fills a square image; small-faces: wild scenes of "
                        "480..1024 px whose face is 10-22%% of the shorter side (group photos, half-body shots).")
    g.add_argument("--image-size", type=int, default=defaults.DEMO_IMAGE_SIZE,
                   help="Side of most portraits, in px (wild scenes are 320..640 px each way).")
    g.add_argument("--workers", type=int, default=0, help="Processes drawing faces (0: one per core).")
    s = sub.add_parser("serve", help="Serve a set on 127.0.0.1 and write its EmotioNet sheet; Ctrl-C stops.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--dir", default=defaults.DEMO_DIR, help="Folder written by `generate`.")
    s.add_argument("--port", type=int, default=None,
                   help=f"Port of the image server (default: {defaults.DEMO_PORT} if free, else any free port; 0: any).")
    s.add_argument("--no-faults", action="store_true", help="Serve every image plainly; the sheet has no failing URLs.")
    s.add_argument("--sheet", default="", help=f"Where to write the sheet (default: DIR/{defaults.DEMO_SHEET}).")
    s.add_argument("--seed", type=int, default=0, help="Seed of the sheet: which rows fail, which labels are 999.")
    s.add_argument("--stall-seconds", type=float, default=defaults.DEMO_STALL_SECONDS,
                   help="How long timeout URLs stall before the server hangs up.")
    s.add_argument("--verbose", action="store_true", help="Log every request to stderr.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        return _serve(args)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as e:
        print(f"python -m pipeline.demo {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
