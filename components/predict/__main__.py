"""CLI: `python -m components.predict [--model URI] INPUT...` scores every face of images and videos with a model."""
from __future__ import annotations

import argparse
import os
import sys

from components.common.cli import StepArgumentParser
from components.common.params import MODEL_NAME, REGISTRY

EPILOG = """\
inputs: image files (any format Pillow reads), videos (mp4, avi, mov, webm, mkv: what OpenCV's FFmpeg reads),
folders (walked) and globs ('photos/**/*.jpg', quoted); local or gs://.
images: one block per image on the console, every face largest first; --json prints the whole result,
--csv one row per image and face (AU01_r the probability, AU01_c 1 when active), --output writes either.
videos: one row per sampled frame and face (frame, timestamp, face_id kept across frames) to --output, or
to <video>.au.csv here, with <video>.au.png, each AU's probability over time.
exit status: 0 every input was scored (a picture without a face included); 1 some could not be (each is
named, and counted by reason at the end); 2 none could, or the model or a flag cannot be used.
"""


def build_parser() -> argparse.ArgumentParser:
    p = StepArgumentParser(
        prog="python -m components.predict",
        description="Scores every face in images and videos with a trained or pushed model: its box, landmarks, "
                    "detector score and each Action Unit's probability and active flag.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="Image or video files, folders or globs (local or gs://).")
    p.add_argument("--model", default=f"{REGISTRY.default}/{MODEL_NAME.default}",
                   help="Registry model root (<registry>/<model_name>, follows LATEST), a version folder, or a model "
                        "folder with saved_model/; local or gs://. Default: %(default)s.")
    p.add_argument("--which-faces", choices=("all", "largest"), default="all",
                   help="Score every face found, or only the largest of each picture. Default: %(default)s.")
    p.add_argument("--threshold", type=float, default=None,
                   help="One threshold for every AU instead of the per-AU ones tuned on validation (metrics.json).")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="Print the result as JSON instead of the console's blocks.")
    out.add_argument("--csv", action="store_true",
                     help="Print one CSV row per image (or sampled frame) and face instead of the console's blocks.")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="Write the rows to FILE (.csv or .parquet; a video's frames too) or the result to FILE "
                        "(.json); the console still shows the results.")
    sample = p.add_mutually_exclusive_group()
    sample.add_argument("--every", type=int, default=1, metavar="N", help="Videos: score every Nth frame. Default: 1.")
    sample.add_argument("--fps", type=float, default=0.0, metavar="F",
                        help="Videos: score F frames per second of video (instead of --every).")
    p.add_argument("--batch-size", type=int, default=32,
                   help="Faces (and images, or video frames) sent to the model at once. Default: %(default)s.")
    p.add_argument("--model-card", action="store_true",
                   help="Print the model's card (what it detects, its data, metrics per AU and slice, what it must not "
                        "be used for) and exit: Markdown, or model_card.json with --json. No INPUT needed.")
    p.add_argument("--verbose", action="store_true",
                   help="Show TensorFlow's, MediaPipe's and the Google libraries' own log lines and warnings.")
    return p


def _check(p: argparse.ArgumentParser, args) -> None:
    if not args.inputs and not args.model_card:
        p.error("no INPUT given: name image or video files, folders or globs (or pass --model-card)")
    if args.every < 1:
        p.error(f"--every is {args.every}; expected 1 or more")
    if args.fps < 0:
        p.error(f"--fps is {args.fps}; expected frames per second above 0")
    if args.batch_size < 1:
        p.error(f"--batch-size is {args.batch_size}; expected 1 or more")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        p.error(f"--threshold is {args.threshold}; expected a probability between 0 and 1")
    if args.output is not None:
        ext = os.path.splitext(args.output)[1].lower()
        if ext not in (".csv", ".parquet", ".json"):
            p.error(f"--output {args.output}: name a .csv or .parquet file (rows) or a .json file (the result)")
        if os.path.abspath(args.output) in {os.path.abspath(i) for i in args.inputs}:
            p.error(f"--output {args.output} is also an input: it would be overwritten")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    if args.model_card:
        return _print_card(args.model, args.json)
    from components.common import inference

    inference.quiet_libraries(verbose=args.verbose)  # before TensorFlow and MediaPipe are imported
    from components.common.errors import refuse
    from components.predict import logic

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        inputs = logic.expand(args.inputs)
    except Exception as e:  # noqa: BLE001 - Cloud Storage refusing to list: one line, not a traceback
        return refuse("predict", _cloud(e))
    if all(i.error is not None for i in inputs):  # before the model: its loading takes seconds
        for i in inputs:
            say(f"predict: {i.error}")
        return 2
    try:
        scorer = inference.Scorer(args.model, which_faces=args.which_faces, batch_size=args.batch_size,
                                  threshold=args.threshold)
        scorer.warmup()
    except inference.ModelError as e:
        return refuse("predict", e)
    except Exception as e:  # noqa: BLE001
        if _is_cloud(e):
            return refuse("predict", _cloud(e))
        raise

    console = not (args.json or args.csv)
    json_file = args.output if args.output and args.output.lower().endswith(".json") else None
    rows_path = "-" if args.csv else (None if json_file else args.output)
    if console:
        print(logic.describe_model(scorer.describe()), flush=True)

    def on_image(r: dict) -> None:
        if console:
            print("\n" + logic.format_image(r, scorer.task, scorer.thresholds), flush=True)
        elif r["error"] is not None:
            say(f"predict: {r['error']}")

    def on_video(s: dict) -> None:
        if console:
            print("\n" + logic.format_video(s), flush=True)
        elif s.get("error") or s.get("warning"):
            say(f"predict: {s.get('error') or s.get('warning')}")

    try:
        result = logic.run(scorer, inputs, outputs=logic.Outputs(rows_path), every=args.every, fps=args.fps,
                           keep=bool(args.json or json_file), on_image=on_image, on_video=on_video,
                           progress_write=say)
    except Exception as e:  # noqa: BLE001
        if _is_cloud(e):
            return refuse("predict", _cloud(e))
        raise
    if json_file:
        os.makedirs(os.path.dirname(os.path.abspath(json_file)), exist_ok=True)
        with open(json_file, "w", encoding="utf-8") as f:
            f.write(logic.to_json(result) + "\n")
    if args.json:
        print(logic.to_json(result), flush=True)
    counts = result["counts"]
    line = logic.format_counts(counts)
    if console:
        print("\n" + line + (f"\nwrote {args.output}" if args.output else ""), flush=True)
    else:
        say(line)
    if counts["errors"] == 0:
        return 0
    return 2 if counts["errors"] >= counts["inputs"] else 1


def _print_card(model: str, as_json: bool) -> int:
    """--model-card: the card of the version --model names (a registry root follows LATEST)."""
    import json

    from components.common import model_card, registry
    from components.common.errors import refuse

    try:
        uri, _ = registry.resolve_model(model)
        card = model_card.read(uri, markdown=not as_json)
    except (registry.RegistryError, model_card.ModelCardError) as e:
        return refuse("predict", e)
    except Exception as e:  # noqa: BLE001
        return refuse("predict", _cloud(e))
    print(json.dumps(card, indent=2) if as_json else card, end="\n" if as_json else "", flush=True)
    return 0


def _is_cloud(e: Exception) -> bool:
    return type(e).__module__.startswith(("google.api_core", "google.auth", "google.cloud"))


def _cloud(e: Exception) -> str:
    if not _is_cloud(e):
        raise e
    return f"Cloud Storage refused: {getattr(e, 'message', None) or e}"


if __name__ == "__main__":
    sys.exit(main())
