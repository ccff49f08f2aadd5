"""Benchmark of the face step on in-the-wild demo scenes: detection recall and box accuracy (BlazeFace, and OpenCV's
Haar cascade beside it), crop throughput at 640x480 on this machine's cores, and test macro F1 of `--faces crop`
against `--faces whole` on the same set and training budget, scored on a held-out set of another seed.
Prints tables; asserts nothing.

    python benchmarks/faces.py                    # all three (about 15 minutes on 2 cores)
    python benchmarks/faces.py --skip-training    # recall and throughput only (about a minute)

Recall counts a face found when the largest detection overlaps the generator's true box with
IoU >= 0.5. Throughput decodes each 640x480 JPEG, finds the face, levels the eyes, crops and
encodes it (components.common.facefinder.crop.prepare, what convert does per image), in one process and in
one process per core. Training runs the step CLIs (convert, filter, train, evaluate) one after
another with the demo's recipe (pipeline/defaults.py PRESETS["demo"]); the held-out set is converted with --no-face whole for crop, so
both modes are scored on every image of it. Datasets are generated once under benchmarks/.cache/faces/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "benchmarks", ".cache", "faces")


def _iou(a, b) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _conditions(row) -> list[str]:
    import numpy as np

    out = ["all"]
    side = min(row["face_x1"] - row["face_x0"], row["face_y1"] - row["face_y0"])
    if side < 0.25 * min(row["width"], row["height"]):
        out.append("small (< 25% of shorter side)")
    if abs(row["tilt"]) >= 10:
        out.append("tilted >= 10 deg")
    if row["grey"]:
        out.append("grey")
    if row["jpeg_quality"]:
        out.append("low-quality JPEG")
    if row["occluder"]:
        out.append("partly hidden")
    if row["faces_in_scene"] > 1:
        out.append("several faces")
    return out if np.isfinite(row["face_x0"]) else []


def recall(size: int, seed: int) -> None:
    """Detection recall and mean IoU per condition, BlazeFace (the step's detector) and OpenCV's Haar cascade."""
    import cv2
    import numpy as np

    from components.common import imaging
    from components.common.facefinder import detect
    from pipeline.demo import generate

    demo_dir = os.path.join(CACHE, f"wild-n{size}-seed{seed}")
    generate.generate_demo(demo_dir, size=size, seed=seed, scene="wild")
    truth = generate.load_labels(demo_dir)
    blaze = detect.get()
    haar = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    found: dict[str, list] = {}
    false_alarms = [0, 0]
    for _, row in truth.iterrows():
        with open(os.path.join(demo_dir, generate.IMAGES_DIR, row["name"]), "rb") as f:
            rgb = np.asarray(imaging.decode_rgb(f.read())[0])
        faces = blaze.detect(rgb)
        boxes = haar.detectMultiScale(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 1.1, 5, minSize=(24, 24))
        haar_box = None
        if len(boxes):
            x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
            haar_box = (x, y, x + w, y + h)
        conditions = _conditions(row)
        if not conditions:
            false_alarms[0] += bool(faces)
            false_alarms[1] += 1
            continue
        true_box = (row["face_x0"], row["face_y0"], row["face_x1"], row["face_y1"])
        iou_blaze = _iou(faces[0].box, true_box) if faces else 0.0
        iou_haar = _iou(haar_box, true_box) if haar_box is not None else 0.0
        for c in conditions:
            found.setdefault(c, []).append((iou_blaze, iou_haar))
    print(f"\nDetection on {size} in-the-wild demo scenes (seed {seed}); a face is found when IoU >= 0.5 "
          "with the true box")
    header = f"{'scenes':<30} {'faces':>6} {'BlazeFace recall':>17} {'mean IoU':>9} {'Haar recall':>12}"
    print(header + "\n" + "-" * len(header))
    for c, v in found.items():
        a = np.asarray(v)
        hits = a[:, 0] >= 0.5
        print(f"{c:<30} {len(a):>6} {hits.mean():>16.1%} {a[hits, 0].mean() if hits.any() else 0:>9.3f} "
              f"{(a[:, 1] >= 0.5).mean():>11.1%}")
    if false_alarms[1]:
        print(f"{'no face in the scene':<30} {false_alarms[1]:>6}   a face reported in {false_alarms[0]}")


def _letterbox(img, w: int = 640, h: int = 480):
    """The scene scaled to fit w x h, the rest filled by its edge colours (the face kept whole)."""
    import numpy as np
    from PIL import Image

    scale = min(w / img.size[0], h / img.size[1])
    small = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.BILINEAR)
    a = np.asarray(small)
    top, left = (h - a.shape[0]) // 2, (w - a.shape[1]) // 2
    a = np.pad(a, ((top, h - a.shape[0] - top), (left, w - a.shape[1] - left), (0, 0)), mode="edge")
    return Image.fromarray(a)


_JOBS: list[bytes] = []


def _warm(jobs=None) -> None:
    """Loads this process's detector (a pool's initializer: the spawned process gets the images once)."""
    from components.common.faces import FaceSettings
    from components.common.facefinder.crop import prepare

    if jobs is not None:
        _JOBS[:] = jobs
    prepare(_JOBS[0], FaceSettings())


def _crop_many(indices) -> int:
    from components.common.faces import FaceSettings
    from components.common.facefinder.crop import prepare

    settings = FaceSettings()
    return sum(prepare(_JOBS[i], settings).jpeg is not None for i in indices)


def throughput(count: int, seed: int) -> None:
    """Images/s of decode + detect + align + crop + encode at 640x480, one process and one per core."""
    import io
    import multiprocessing

    import numpy as np
    from PIL import Image

    from components.common import imaging
    from components.common.faces import FaceSettings
    from components.common.facefinder import align, detect
    from components.common.facefinder.crop import prepare
    from pipeline.demo import generate

    demo_dir = os.path.join(CACHE, f"wild-n{count}-seed{seed}")
    generate.generate_demo(demo_dir, size=count, seed=seed, scene="wild")
    truth = generate.load_labels(demo_dir)
    _JOBS.clear()
    for name in truth["name"]:
        with open(os.path.join(demo_dir, generate.IMAGES_DIR, name), "rb") as f:
            img = imaging.decode_rgb(f.read())[0]
        out = io.BytesIO()
        _letterbox(img).save(out, "JPEG", quality=90)
        _JOBS.append(out.getvalue())
    settings = FaceSettings()
    # One process, stage by stage.
    _warm()
    stages = {"decode": 0.0, "detect": 0.0, "align + crop + encode": 0.0}
    start = time.perf_counter()
    for data in _JOBS:
        t0 = time.perf_counter()
        rgb = np.asarray(imaging.decode_rgb(data)[0])
        t1 = time.perf_counter()
        found = detect.get().detect(rgb)
        t2 = time.perf_counter()
        if found:
            crop, _ = align.align_crop(rgb, found[0], settings.size, settings.margin)
            Image.fromarray(crop).save(io.BytesIO(), "JPEG", quality=95)
        stages["decode"] += t1 - t0
        stages["detect"] += t2 - t1
        stages["align + crop + encode"] += time.perf_counter() - t2
    one = len(_JOBS) / (time.perf_counter() - start)
    cores = len(os.sched_getaffinity(0))
    # spawn: this process has run the detector, and MediaPipe hangs in a child forked after that (convert
    # forks its workers before any detection). Each worker loads its own detector once, as convert's do.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(cores, initializer=_warm, initargs=(list(_JOBS),)) as pool:
        pool.map(len, [()] * cores)  # wait until every worker is up
        start = time.perf_counter()
        chunks = [range(i, min(i + 16, len(_JOBS))) for i in range(0, len(_JOBS), 16)]
        cropped = sum(pool.map(_crop_many, chunks))
        many = len(_JOBS) / (time.perf_counter() - start)
    start = time.perf_counter()
    cropped_one = sum(prepare(d, settings).jpeg is not None for d in _JOBS)
    prepare_one = len(_JOBS) / (time.perf_counter() - start)
    print(f"\nCrop throughput: {len(_JOBS)} in-the-wild scenes letterboxed to 640x480 JPEG (q90), crops of "
          f"{settings.size} px; {cropped} of them had a face to crop")
    header = f"{'run':<50} {'images/s':>9}"
    print(header + "\n" + "-" * len(header))
    print(f"{'prepare, 1 process':<50} {prepare_one:>9.0f}")
    print(f"{f'prepare, {cores} processes (one per core)':<50} {many:>9.0f}")
    for name, seconds in stages.items():
        print(f"{'  ms per image, ' + name + ' (1 process)':<50} {1000 * seconds / len(_JOBS):>9.2f}")
    print(f"{'  stages summed, 1 process':<50} {one:>9.0f}")
    assert cropped == cropped_one


def _cli(*args, timeout=3600) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:1])} failed:\n{done.stderr[-3000:]}")


def _demo_flags(spec) -> list[str]:
    """The demo preset's values (pipeline/defaults.py) that are parameters of this step, as its CLI's flags."""
    from pipeline.defaults import DEMO_PRESET, PRESETS

    preset = PRESETS[DEMO_PRESET]
    return [a for p in spec.params if p.in_dag and p.dag_name in preset for a in (p.cli_flag, str(preset[p.dag_name]))]


def training(train_size: int, test_size: int, epochs: int | None) -> None:
    """Macro F1 on a held-out in-the-wild set of another seed, --faces crop vs --faces whole, same budget."""
    import convert as convert_benchmark  # benchmarks/convert.py: a demo set laid out as ingest and download leave it

    from components.common.evaluation import METRICS_FILE
    from components.common.examples import EXAMPLES_SUMMARY_FILE
    from components.convert.params import SPEC as CONVERT
    from components.train.params import SPEC as TRAIN

    train_data = convert_benchmark.dataset(train_size, 128, seed=0, scene="wild", cache=CACHE)
    test_data = convert_benchmark.dataset(test_size, 128, seed=1, scene="wild", cache=CACHE)
    rows = []
    for mode in ("crop", "whole"):
        work = os.path.join(CACHE, f"run-{mode}-n{train_size}-e{epochs or 'default'}")
        started = time.perf_counter()
        for name, data, no_face, fractions in (
            ("train", train_data, "skip", ("0.15", "0.15")),
            ("heldout", test_data, "whole", ("0.15", "0.84")),
        ):
            _cli("components.convert", "--manifest", os.path.join(data, "manifest"), "--downloads",
                 os.path.join(data, "downloads"), "--output", os.path.join(work, f"{name}-examples"),
                 "--faces", mode, "--no-face", no_face, "--validation-fraction", fractions[0],
                 "--test-fraction", fractions[1], *_demo_flags(CONVERT))
            _cli("components.filter", "--examples", os.path.join(work, f"{name}-examples"),
                 "--output", os.path.join(work, f"{name}-filtered"))
        converted = time.perf_counter() - started
        train_args = ["--epochs", str(epochs)] if epochs else []
        _cli("components.train", "--examples", os.path.join(work, "train-filtered"), "--output",
             os.path.join(work, "model"), *_demo_flags(TRAIN), *train_args)
        trained = time.perf_counter() - started - converted
        result = {}
        for name in ("train", "heldout"):
            out = os.path.join(work, f"eval-{name}")
            _cli("components.evaluate", "--examples", os.path.join(work, f"{name}-filtered"), "--model",
                 os.path.join(work, "model"), "--output", out, "--registry", os.path.join(work, "no-registry"))
            with open(os.path.join(out, METRICS_FILE)) as f:
                result[name] = json.load(f)
        with open(os.path.join(work, "train-examples", EXAMPLES_SUMMARY_FILE)) as f:
            counters = json.load(f)["counters"]
        rows.append((mode, result, counters, converted, trained))
    print(f"\nTraining on {train_size} in-the-wild scenes (seed 0), the demo's recipe"
          + (f", {epochs} epochs" if epochs else "") + f"; held-out set: {test_size} scenes of seed 1")
    header = (f"{'faces':<6} {'train ex.':>9} {'same-seed F1':>13} {'held-out F1@0.5':>16} {'F1 tuned':>9} "
              f"{'AUC':>6} {'convert s':>10} {'train s':>8}")
    print(header + "\n" + "-" * len(header))
    for mode, result, counters, converted, trained in rows:
        h = result["heldout"]
        print(f"{mode:<6} {counters['examples_written']:>9} {result['train']['at_default']['macro']['f1']:>13.3f} "
              f"{h['at_default']['macro']['f1']:>16.3f} {h['at_tuned']['macro']['f1']:>9.3f} "
              f"{h['at_default']['macro']['auc']:>6.3f} {converted:>10.0f} {trained:>8.0f}")
    crop, whole = rows[0][1]["heldout"], rows[1][1]["heldout"]
    print(f"crop - whole, held-out macro F1 at 0.5: {crop['at_default']['macro']['f1'] - whole['at_default']['macro']['f1']:+.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recall-size", type=int, default=1000, help="Scenes the detection recall is measured on (0: skip).")
    parser.add_argument("--throughput-size", type=int, default=300, help="Scenes the crop throughput is timed on (0: skip).")
    parser.add_argument("--train-size", type=int, default=2000, help="Scenes trained on (the make run demo size).")
    parser.add_argument("--test-size", type=int, default=600, help="Scenes of the held-out set (another seed).")
    parser.add_argument("--epochs", type=int, default=0, help="Training epochs (0: the demo preset's).")
    parser.add_argument("--skip-training", action="store_true", help="Only recall and throughput.")
    args = parser.parse_args(argv)
    os.makedirs(CACHE, exist_ok=True)
    print(f"cores: {len(os.sched_getaffinity(0))}  load average: {os.getloadavg()[0]:.1f}")
    if args.recall_size:
        recall(args.recall_size, seed=7)
    if args.throughput_size:
        throughput(args.throughput_size, seed=8)
    if not args.skip_training:
        training(args.train_size, args.test_size, args.epochs or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
