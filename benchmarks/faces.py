"""Benchmark of the face step on in-the-wild demo scenes: detection recall and box accuracy (BlazeFace on the whole
picture, with tiles, and OpenCV's Haar cascade beside it), on the default scenes and on small-faces scenes, crop
throughput at 640x480 on this machine's cores, and test macro F1 of `--faces crop` against `--faces whole` on the
same set and training budget, scored on a held-out set of another seed. Prints tables; asserts nothing.

    python benchmarks/faces.py                    # all of it (about 20 minutes on 2 cores)
    python benchmarks/faces.py --skip-training    # recall and throughput only (a few minutes)

Recall counts a face found when the largest detection overlaps the generator's true box with
IoU >= 0.5, for the face finder's three tile policies (components/common/facefinder/tiles.py):
the whole picture only (as before the tiles), tiles where the whole picture gave no clear face
(auto, the default), tiles always. The small-faces scenes are 480..1024 px with the face 10-22% of the
shorter side (python -m pipeline.demo generate --scene small-faces); pictures without a face,
drawn the same way, count false alarms. Throughput decodes each 640x480 JPEG, finds the face,
levels the eyes, crops and encodes it (components.common.facefinder.crop.prepare, what convert
does per image), in one process and in one process per core, for each policy. Training runs the step CLIs (convert, filter, train, evaluate) one after
another with the demo's recipe (pipeline/defaults.py PRESETS["demo"]); the held-out set is converted with
--no-face whole for crop, so both modes are scored on every image of it. Datasets are generated once under benchmarks/.cache/faces/.
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


POLICIES = ("never", "auto", "always")  # facefinder.tiles.TILE_POLICIES, in the order the tables show them
POLICY_HEADS = {"never": "picture only", "auto": "+ tiles (auto)", "always": "+ tiles always"}
# The sizes of a face in BlazeFace's 192 px view of the whole picture, for the table of what the tiles are for.
VIEW_BINS = (0, 12, 15, 18, 21, 25, 30, 40, 1000)


def _conditions(row) -> list[str]:
    import numpy as np

    out = ["all"]
    side = min(row["face_x1"] - row["face_x0"], row["face_y1"] - row["face_y0"])
    if max(row["face_x1"] - row["face_x0"], row["face_y1"] - row["face_y0"]) >= 48:
        out.append("at least 48 px")
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


def _read_rgb(demo_dir: str, name: str):
    import numpy as np

    from components.common import imaging
    from pipeline.demo import generate

    with open(os.path.join(demo_dir, generate.IMAGES_DIR, name), "rb") as f:
        return np.asarray(imaging.decode_rgb(f.read())[0])


def recall(size: int, seed: int, scene: str = "wild") -> None:
    """Detection recall and mean IoU per condition: BlazeFace on the whole picture only (as before the tiles), with
    tiles where it found no clear face (auto, the default), with tiles always; OpenCV's Haar cascade beside them."""
    import cv2
    import numpy as np

    from components.common.facefinder import detect
    from pipeline.demo import generate

    demo_dir = os.path.join(CACHE, f"{scene}-n{size}-seed{seed}")
    generate.generate_demo(demo_dir, size=size, seed=seed, scene=scene)
    truth = generate.load_labels(demo_dir)
    detectors = {p: detect.get(tiles=p) for p in POLICIES}
    haar = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    found: dict[str, list] = {}
    seconds = dict.fromkeys(POLICIES, 0.0)
    tiles = dict.fromkeys(POLICIES, 0)
    by_scale = {p: {} for p in POLICIES}
    false_alarms = [dict.fromkeys(POLICIES, 0), 0]
    view: dict[int, list] = {}  # bin of the face's size in the whole picture's view -> (IoU picture only, always)
    for _, row in truth.iterrows():
        rgb = _read_rgb(demo_dir, row["name"])
        largest = {}
        for p, detector in detectors.items():
            start = time.perf_counter()
            searched = detector.search(rgb)
            seconds[p] += time.perf_counter() - start
            tiles[p] += searched.tiles
            for face in searched.faces:
                by_scale[p][face.scale] = by_scale[p].get(face.scale, 0) + 1
            largest[p] = searched.faces[0].box if searched.faces else None
        boxes = haar.detectMultiScale(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 1.1, 5, minSize=(24, 24))
        haar_box = None
        if len(boxes):
            x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
            haar_box = (x, y, x + w, y + h)
        conditions = _conditions(row)
        if not conditions:
            for p in POLICIES:
                false_alarms[0][p] += largest[p] is not None
            false_alarms[1] += 1
            continue
        true_box = (row["face_x0"], row["face_y0"], row["face_x1"], row["face_y1"])
        ious = [_iou(largest[p], true_box) if largest[p] is not None else 0.0 for p in POLICIES]
        ious.append(_iou(haar_box, true_box) if haar_box is not None else 0.0)
        for c in conditions:
            found.setdefault(c, []).append(ious)
        side = max(true_box[2] - true_box[0], true_box[3] - true_box[1])
        px = side * 192 / max(row["width"], row["height"])
        view.setdefault(int(np.searchsorted(VIEW_BINS, px, side="right")) - 1, []).append((ious[0], ious[2]))
    summary = json.load(open(os.path.join(demo_dir, generate.SUMMARY_FILE)))
    fs = summary["face_size"]
    print(f"\nDetection on {size} {scene} demo scenes (seed {seed}): faces {fs['min_px']:.0f}-{fs['max_px']:.0f} px, "
          f"{fs['min_share']:.0%}-{fs['max_share']:.0%} of the shorter side; a face is found when the largest "
          "detection has IoU >= 0.5 with the true box")
    header = (f"{'scenes':<30} {'faces':>6}" + "".join(f" {POLICY_HEADS[p]:>16}" for p in POLICIES)
              + f" {'Haar cascade':>13}")
    print(header + "\n" + "-" * len(header))
    for c, v in found.items():
        a = np.asarray(v)
        print(f"{c:<30} {len(a):>6}" + "".join(f" {(a[:, k] >= 0.5).mean():>16.1%}" for k in range(len(POLICIES)))
              + f" {(a[:, -1] >= 0.5).mean():>13.1%}")
    a = np.asarray(found["all"])
    print(f"{'  mean IoU of those found':<37}" + "".join(
        f" {a[a[:, k] >= 0.5, k].mean() if (a[:, k] >= 0.5).any() else 0:>16.3f}" for k in range(len(POLICIES))))
    n = len(truth)
    print(f"{'  ms per image (1 process)':<37}" + "".join(f" {1000 * seconds[p] / n:>16.1f}" for p in POLICIES))
    print(f"{'  tiles searched per image':<37}" + "".join(f" {tiles[p] / n:>16.2f}" for p in POLICIES))
    print(f"{'  faces found: picture / tiles':<37}" + "".join(
        f" {by_scale[p].get('picture', 0):>9} / {by_scale[p].get('tiles', 0):<4}" for p in POLICIES))
    if false_alarms[1]:
        print(f"{'  scenes without a face: a face in':<37}" + "".join(
            f" {f'{false_alarms[0][p]} of {false_alarms[1]}':>16}" for p in POLICIES))
    print("By the face's size in BlazeFace's 192 px view of the whole picture (its larger side): found, and the mean "
          "IoU of those found")
    for k in sorted(view):
        hi = f"{VIEW_BINS[k + 1]}" if VIEW_BINS[k + 1] < 1000 else ""
        a = np.asarray(view[k])
        cells = []
        for j, head in ((0, POLICY_HEADS["never"]), (1, POLICY_HEADS["always"])):
            hit = a[:, j] >= 0.5
            cells.append(f"{head} {hit.mean():>6.1%} IoU {a[hit, j].mean() if hit.any() else 0:.3f}")
        print(f"  {VIEW_BINS[k]:>3}-{hi:<3} px: {len(a):>5} faces; " + "; ".join(cells))


def false_alarms(count: int, seed: int, scene: str) -> None:
    """Pictures without a face, drawn as the scene's are (its sizes, backgrounds, light, noise): how many each
    policy reports a face in. The demo sets hold ~1% of them; the tiles search each one again, several times over."""
    import numpy as np

    from components.common.facefinder import detect
    from pipeline.demo import faces, scenes

    detectors = {p: detect.get(tiles=p) for p in POLICIES}
    inten = faces.sample_labels(1, seed).intensity[0]
    reported = dict.fromkeys(POLICIES, 0)
    for i in range(count):
        plan = scenes.ScenePlan(face=False, grey=i % 10 == 0)
        img, _ = scenes.render_scene(inten, np.random.default_rng([seed, i]), plan, scenes.SIZES[scene])
        rgb = np.asarray(img)
        for p, detector in detectors.items():
            reported[p] += bool(detector.detect(rgb))
    print(f"\n{count} {scene} pictures without a face (seed {seed}): pictures a face is reported in")
    header = "".join(f" {POLICY_HEADS[p]:>16}" for p in POLICIES)
    print(header + "\n" + "-" * len(header))
    print("".join(f" {reported[p]:>16}" for p in POLICIES))


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
_POLICY = ["auto"]
REPEATS = 3  # throughput runs of each row, the best reported


def _warm(jobs=None, policy: str = "auto") -> None:
    """Loads this process's detector (a pool's initializer: the spawned process gets the images once)."""
    from components.common.faces import FaceSettings
    from components.common.facefinder import detect
    from components.common.facefinder.crop import prepare

    if jobs is not None:
        _JOBS[:] = jobs
    _POLICY[0] = policy
    prepare(_JOBS[0], FaceSettings(), detector=detect.get(tiles=policy))


def _crop_many(indices) -> int:
    from components.common.faces import FaceSettings
    from components.common.facefinder import detect
    from components.common.facefinder.crop import prepare

    settings, detector = FaceSettings(), detect.get(tiles=_POLICY[0])
    return sum(prepare(_JOBS[i], settings, detector=detector).jpeg is not None for i in indices)


def _jobs_640x480(count: int, seed: int, scene: str) -> list[bytes]:
    import io

    from components.common import imaging
    from pipeline.demo import generate

    demo_dir = os.path.join(CACHE, f"{scene}-n{count}-seed{seed}")
    generate.generate_demo(demo_dir, size=count, seed=seed, scene=scene)
    jobs = []
    for name in generate.load_labels(demo_dir)["name"]:
        with open(os.path.join(demo_dir, generate.IMAGES_DIR, name), "rb") as f:
            img = imaging.decode_rgb(f.read())[0]
        out = io.BytesIO()
        _letterbox(img).save(out, "JPEG", quality=90)
        jobs.append(out.getvalue())
    return jobs


def _many_processes(jobs: list[bytes], policy: str, cores: int) -> tuple[float, int]:
    """(images/s, crops) of prepare in one process per core, each with its own detector, as convert's workers."""
    import multiprocessing

    # spawn: this process has run the detector, and MediaPipe hangs in a child forked after that (convert
    # forks its workers before any detection). Each worker loads its own detector once, as convert's do.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(cores, initializer=_warm, initargs=(list(jobs), policy)) as pool:
        pool.map(len, [()] * cores)  # wait until every worker is up
        chunks = [range(i, min(i + 16, len(jobs))) for i in range(0, len(jobs), 16)]
        best = 0.0
        for _ in range(REPEATS):  # the best of a few: the machine may be shared
            start = time.perf_counter()
            cropped = sum(pool.map(_crop_many, chunks))
            best = max(best, len(jobs) / (time.perf_counter() - start))
        return best, cropped


def throughput(count: int, seed: int) -> None:
    """Images/s of decode + detect + align + crop + encode at 640x480, one process and one per core, for each tile
    policy, on wild scenes and on small-faces scenes (where the whole picture misses more faces: more tiles)."""
    import io

    import numpy as np
    from PIL import Image

    from components.common import imaging
    from components.common.faces import FaceSettings
    from components.common.facefinder import align, detect
    from components.common.facefinder.crop import prepare

    settings = FaceSettings()
    cores = len(os.sched_getaffinity(0))
    sets = {scene: _jobs_640x480(count, seed, scene) for scene in ("wild", "small-faces")}
    _JOBS[:] = sets["wild"]
    # One process, stage by stage, the default (tiles where the whole picture found no clear face).
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
    rows = []
    for scene, jobs in sets.items():
        for policy in POLICIES:
            detector = detect.get(tiles=policy)
            prepare(jobs[0], settings, detector=detector)
            single = per_cpu = 0.0
            for _ in range(REPEATS):  # the best of a few: the machine may be shared
                start, cpu = time.perf_counter(), time.process_time()
                cropped_one = sum(prepare(d, settings, detector=detector).jpeg is not None for d in jobs)
                single = max(single, len(jobs) / (time.perf_counter() - start))
                per_cpu = max(per_cpu, len(jobs) / (time.process_time() - cpu))  # MediaPipe's threads included
            many, cropped = _many_processes(jobs, policy, cores)
            assert cropped == cropped_one
            rows.append((scene, policy, single, per_cpu, many, cropped, len(jobs)))
    print(f"\nCrop throughput: {count} demo scenes of each set letterboxed to 640x480 JPEG (q90), crops of "
          f"{settings.size} px, images/s, best of {REPEATS} (per CPU-second: the cost whatever else the machine "
          f"runs; load average {os.getloadavg()[0]:.1f})")
    header = (f"{'scenes':<12} {'face finder':<16} {'1 process':>10} {'per CPU-s':>10} {f'{cores} processes':>12} "
              f"{'cropped':>9}")
    print(header + "\n" + "-" * len(header))
    for scene, policy, single, per_cpu, many, cropped, n in rows:
        print(f"{scene:<12} {POLICY_HEADS[policy]:<16} {single:>10.0f} {per_cpu:>10.0f} {many:>12.0f} "
              f"{f'{cropped}/{n}':>9}")
    print(f"wild scenes, {POLICY_HEADS['auto']} (the default), 1 process, stage by stage:")
    for name, seconds in stages.items():
        print(f"{'  ms per image, ' + name:<50} {1000 * seconds / len(_JOBS):>9.2f}")
    print(f"{'  stages summed, images/s':<50} {one:>9.0f}")


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
    parser.add_argument("--small-faces-size", type=int, default=300,
                        help="Small-faces scenes (480..1024 px, faces 10-22%% of the shorter side) the recall with and "
                             "without tiles is measured on, and pictures without a face for false alarms (0: skip).")
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
    if args.small_faces_size:
        recall(args.small_faces_size, seed=7, scene="small-faces")
        false_alarms(args.small_faces_size, seed=9, scene="small-faces")
    if args.throughput_size:
        throughput(args.throughput_size, seed=8)
    if not args.skip_training:
        training(args.train_size, args.test_size, args.epochs or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
