"""Benchmark of where the demo model fails: on held-out in-the-wild demo scenes, macro F1 of each slice evaluate derives
from what the examples carry (face size, head tilt, detector score, grey, face status, unknown AUs, image size, host),
beside the same test examples grouped by the conditions the demo drew (small face, tilt, grey, JPEG quality, occluder,
several faces). Prints a table; asserts nothing.

    python benchmarks/slices.py                                   # 2000 training scenes, 600 held out (the make-run world)
    python benchmarks/slices.py --train-size 800 --test-size 400  # smaller and quicker

Training runs the step CLIs (convert, filter, train) with the demo preset's recipe (pipeline/defaults.py
PRESETS["demo"]), as benchmarks/faces.py does; the held-out set (another seed) is converted with --no-face whole,
so every scene of it is scored, and evaluated in this process with components.evaluate.logic.run (the slices and
errors.json in its evaluation folder). The same test examples are then scored again and grouped by the truth the
demo recorded for each scene (labels.parquet: the face box, tilt, grey, jpeg_quality, occluder, faces_in_scene),
each group measured as evaluate measures a slice (components.evaluate.slices.measure: macro F1 over the AUs with a
known positive and negative in it). Datasets are generated once under benchmarks/.cache/slices/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "benchmarks", ".cache", "slices")
# The demo's truth, cut as a person would name it: the face's larger side as a share of the scene's shorter side
# (pipeline.demo.scenes draws it in 0.15-0.45), in px, and the tilt drawn (10-30 degrees for a tilted scene).
TRUE_SHARE_EDGES = (0.2, 0.3, 0.4)
TRUE_PX_EDGES = (64, 96, 128)
TILTED_DEG = 10.0
NO_FACE = "no face"  # a scene drawn without a face (converted whole): no box, tilt or occluder


def true_conditions(row) -> dict[str, str]:
    """{condition: value} of one demo scene from its labels.parquet row."""
    import math

    from components.evaluate.slices import bin_label

    face = row["faces_in_scene"] > 0 and not math.isnan(float(row["face_x0"]))
    side = max(row["face_x1"] - row["face_x0"], row["face_y1"] - row["face_y0"]) if face else 0.0
    return {
        "true face share": bin_label(side / min(row["width"], row["height"]), TRUE_SHARE_EDGES, digits=2)
        if face else NO_FACE,
        "true face px": bin_label(side, TRUE_PX_EDGES, "px") if face else NO_FACE,
        "true tilt": (f">={TILTED_DEG:g} deg" if abs(row["tilt"]) >= TILTED_DEG else f"<{TILTED_DEG:g} deg")
        if face else NO_FACE,
        "true grey": "grey" if row["grey"] else "colour",
        "true JPEG quality": "low (8-25)" if row["jpeg_quality"] else "normal",
        "true occluded": ("yes" if row["occluder"] else "no") if face else NO_FACE,
        "true occluder": (row["occluder"] or "none") if face else NO_FACE,
        "true faces in scene": "none" if not face else "several" if row["faces_in_scene"] > 1 else "one",
    }


def truth_groups(keys: list[str], truth) -> dict[str, list[str]]:
    """{condition: the value of each example}, aligned with keys (examples' keys are the manifest's)."""
    from components.common import labels

    by_key = {labels.image_key(f"http://127.0.0.1/demo/{name}"): i for i, name in enumerate(truth["name"])}
    rows = [true_conditions(truth.iloc[by_key[k]]) for k in keys]
    return {c: [r[c] for r in rows] for c in (rows[0] if rows else {})}


def measure_groups(test: dict, tuned, au_ids, groups: dict[str, list[str]], min_size: int
                   ) -> tuple[list[dict], list[dict]]:
    """(each value of each condition measured as evaluate measures a slice, those of fewer than min_size examples)."""
    from components.evaluate import slices

    order = {"true face share": slices.bin_order(TRUE_SHARE_EDGES, digits=2),
             "true face px": slices.bin_order(TRUE_PX_EDGES, "px"),
             "true tilt": [f"<{TILTED_DEG:g} deg", f">={TILTED_DEG:g} deg"]}
    cut = slices.slice_metrics(test, tuned, au_ids, groups, min_size)
    features = list(groups)

    def place(m):  # bins small to large (as evaluate's own tables), every other condition as slice_metrics orders it
        known = order.get(m["feature"], [])
        return features.index(m["feature"]), known.index(m["value"]) if m["value"] in known else len(known)

    return sorted(cut["measured"], key=place), sorted(cut["too_small"], key=place)


def table(derived: list[dict], truth: list[dict], overall: float, examples: int) -> str:
    """The two groupings side by side as one table (Markdown), the weakest of each named under it."""
    def rows(entries):
        return [f"| {m['feature']} | {m['value']} | {m['examples']} | {_num(m['macro_f1'])} | {_num(m['macro_f1_tuned'])} |"
                for m in entries]

    head = ["| slice | value | examples | macro F1 @0.5 | macro F1 tuned |", "|---|---|---:|---:|---:|"]
    out = [f"Whole held-out test split: {examples} examples, macro F1 @0.5 {_num(overall)}", "",
           "Slices evaluate derives (metrics.json):", *head, *rows(derived), "",
           "The same test examples by the demo's true conditions:", *head, *rows(truth), ""]
    for name, entries in (("evaluate's slices", derived), ("true conditions", truth)):
        rated = sorted((m for m in entries if m["macro_f1"] is not None), key=lambda m: m["macro_f1"])[:3]
        out.append(f"weakest of {name}: " + "; ".join(f"{m['feature']} {m['value']} ({_num(m['macro_f1'])}, "
                                                       f"n={m['examples']})" for m in rated))
    return "\n".join(out)


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=2000, help="Scenes trained on (the make run demo size).")
    parser.add_argument("--test-size", type=int, default=600, help="Scenes of the held-out set (another seed).")
    parser.add_argument("--epochs", type=int, default=0, help="Training epochs (0: the demo preset's).")
    parser.add_argument("--min-slice-size", type=int, default=30,
                        help="Examples a slice (or a true condition's group) needs to be measured.")
    parser.add_argument("--cache", default=CACHE, help="Where the demo sets, examples and model are kept.")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if min(args.train_size, args.test_size) < 10:
        parser.error("--train-size and --test-size must be at least 10 scenes")

    import convert as convert_benchmark  # benchmarks/convert.py: a demo set laid out as ingest and download leave it
    from faces import _cli, _demo_flags  # benchmarks/faces.py: the step CLIs with the demo preset's flags

    from components.common import examples as ex
    from components.convert.params import SPEC as CONVERT
    from components.evaluate import logic as evaluate
    from components.evaluate.scoring import read_model_config, score_model
    from components.train.params import SPEC as TRAIN
    from pipeline.demo import generate

    os.makedirs(args.cache, exist_ok=True)
    print(f"cores: {len(os.sched_getaffinity(0))}  load average: {os.getloadavg()[0]:.1f}", flush=True)
    started = time.perf_counter()
    train_data = convert_benchmark.dataset(args.train_size, 128, seed=0, scene="wild", cache=args.cache)
    test_data = convert_benchmark.dataset(args.test_size, 128, seed=1, scene="wild", cache=args.cache)
    work = os.path.join(args.cache, f"run-n{args.train_size}-t{args.test_size}-e{args.epochs or 'default'}")
    for name, data, no_face, fractions in (("train", train_data, "skip", ("0.15", "0.15")),
                                           ("heldout", test_data, "whole", ("0.15", "0.84"))):
        if not os.path.exists(os.path.join(work, f"{name}-filtered", ex.EXAMPLES_SUMMARY_FILE)):
            _cli("components.convert", "--manifest", os.path.join(data, "manifest"), "--downloads",
                 os.path.join(data, "downloads"), "--output", os.path.join(work, f"{name}-examples"),
                 "--faces", "crop", "--no-face", no_face, "--validation-fraction", fractions[0],
                 "--test-fraction", fractions[1], *_demo_flags(CONVERT))
            _cli("components.filter", "--examples", os.path.join(work, f"{name}-examples"),
                 "--output", os.path.join(work, f"{name}-filtered"))
    converted = time.perf_counter() - started
    model = os.path.join(work, "model")
    if not os.path.exists(os.path.join(model, "model_config.json")):
        _cli("components.train", "--examples", os.path.join(work, "train-filtered"), "--output", model,
             *_demo_flags(TRAIN), *(["--epochs", str(args.epochs)] if args.epochs else []))
    trained = time.perf_counter() - started - converted
    heldout = os.path.join(work, "heldout-filtered")
    result = evaluate.run(heldout, model, os.path.join(work, "evaluation"), registry="", min_macro_f1=0.0,
                          min_macro_auc=0.0, min_slice_size=args.min_slice_size)
    metrics = result["metrics"]
    config = read_model_config(model)
    with tempfile.TemporaryDirectory(prefix="slices-benchmark-") as tmp:
        test = score_model(model, config, heldout, ex.read_summary(heldout), ["test"], tmp, 64)["test"]
    tuned = [metrics["thresholds"]["tuned"][str(a)] for a in config["au_ids"]]
    truth, truth_small = measure_groups(test, tuned, config["au_ids"],
                           truth_groups(test["keys"], generate.load_labels(os.path.join(test_data, "demo"))),
                           args.min_slice_size)
    print(f"\nDemo recipe trained on {args.train_size} in-the-wild scenes (seed 0)"
          + (f", {args.epochs} epochs" if args.epochs else "") + f"; held-out set: {args.test_size} scenes of seed 1; "
          f"slices of at least {args.min_slice_size} examples; convert {converted:.0f} s, train {trained:.0f} s "
          "(0: made by an earlier run, kept in --cache)")
    print(table(metrics["slices"]["measured"], truth, metrics["at_default"]["macro"]["f1"], metrics["examples"]))
    for name, small in (("evaluate's slices", metrics["slices"]["too_small"]), ("true conditions", truth_small)):
        if small:
            print(f"{name} too small to measure: " + ", ".join(f"{m['feature']} {m['value']} (n={m['examples']})"
                                                                 for m in small))
    print(f"errors gallery: {os.path.join(work, 'evaluation', 'errors.json')}")
    with open(os.path.join(work, "slices.json"), "w") as f:
        json.dump({"derived": metrics["slices"]["measured"], "truth": truth}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
