"""Benchmark of using a model: images/s of predict on a folder and of annotate, frames/s of predict on a video, each
against the face detector alone on the same pictures, and peak memory of a small and a large input. Prints a table;
asserts nothing.

    python benchmarks/predict.py      # the `make run` model, or the demo recipe's (~10 minutes on 2 quiet cores)
    python benchmarks/predict.py --model runs/registry/au-detector --big-images 0 --big-frames 0   # rates only

The pictures: --photos 640x480 JPEGs with one face (matplotlib's photo of Grace Hopper, her face 80 to 160 px, pasted
on noisy two-colour grounds); the larger folders (--images, --big-images) are the same files hard-linked under
other names, so they hold as many files as they say but decode like the small one. The video: a 640x480 mp4
(cv2.VideoWriter, mp4v, 30 fps) of the photo gliding over a ground; the small one is the large one's first --frames
frames. The model: --model, else runs/registry/au-detector (what `make run` pushes), else one trained once under
benchmarks/.cache/predict/ with the demo recipe's backbone, input size and crops (pipeline/defaults.py PRESETS["demo"]:
compactcnn at 128 px from 160 px crops) on synthetic examples for one short epoch: its weights are no good, its cost
per face is the `make run` model's.

Each row runs in a child process (its peak RSS from wait4):
  detector alone       read + decode (inference.decode; OpenCV for video frames) + facefinder detect, in 1 thread
                       and in a thread per core each with its own detector (as the scorer does): the latter is the
                       bound of this design
  predict, in-process  Scorer.score on Scorer.chunk files at a time (read and decode counted), as predict gives them;
                       score_video on a video
  predict CLI          python -m components.predict --model M --csv FOLDER, its rows read and dropped; start-up is the
                       time to its CSV header (written once the model is loaded and warm), the rate taken after it
  annotate CLI         python -m components.annotate --images FOLDER --output TMP --model M on --images and on
                       --annotate-images images: it prints nothing before it ends, so its rate is the images between
                       the two over the time between them (the start-up of Beam and its worker processes drops out),
                       and its start-up the first run's time beyond its images at that rate
The share is a row's rate over the detector alone on every core on the same pictures. CPU ms each: the CPU time of
every thread per picture (start-up left out), and its share the same way: on a machine busy with other work the rates
fall with the CPU time the benchmark is given, the CPU time per picture much less. The load average (1 minute) at
each row's end is printed beside it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "benchmarks", ".cache", "predict")
MAKE_RUN_MODEL = os.path.join(ROOT, "runs", "registry", "au-detector")
MARKER = "BENCH_JSON "
SIZE = (640, 480)
FPS = 30.0


# --- the pictures, the video and the model ----------------------------------------------------------------------
def scenes(count: int, seed: int) -> list[bytes]:
    """count 640x480 JPEGs (q90) with one face: matplotlib's photo of Grace Hopper (her face 80 to 160 px) pasted at a
    random place on a ground of two colours blended across the picture, with noise, as a camera's would have."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(f).convert("RGB")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE[1], 0:SIZE[0]].astype(np.float32)
    out = []
    for _ in range(count):
        a, b = rng.integers(0, 256, (2, 3)).astype(np.float32)
        angle = rng.uniform(0, np.pi)
        t = (xx * np.cos(angle) + yy * np.sin(angle)) / (SIZE[0] + SIZE[1])
        ground = a + (b - a) * t[..., None] + rng.normal(0, 8, (SIZE[1], SIZE[0], 3))
        canvas = Image.fromarray(np.clip(ground, 0, 255).astype(np.uint8))
        w = int(rng.integers(205, 410))  # her face is 0.39 of the photo's width
        h = int(w * photo.size[1] / photo.size[0])
        canvas.paste(photo.resize((w, h)), (int(rng.integers(0, SIZE[0] - w)), int(rng.integers(0, SIZE[1] - h + 1))))
        buf = io.BytesIO()
        canvas.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def photos(folder: str, count: int, seed: int) -> list[str]:
    """count scenes() in folder (made once); their paths."""
    paths = [os.path.join(folder, f"photo-{i:05d}.jpg") for i in range(count)]
    if all(os.path.exists(p) for p in paths):
        return paths
    os.makedirs(folder, exist_ok=True)
    for path, data in zip(paths, scenes(count, seed)):
        with open(path, "wb") as f:
            f.write(data)
    return paths


def linked(folder: str, sources: list[str], count: int) -> str:
    """A folder of count hard links (copies where links fail) to the sources, round-robin, under new names."""
    marker = os.path.join(folder, ".complete")
    if os.path.exists(marker):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for i in range(count):
        src, dst = sources[i % len(sources)], os.path.join(folder, f"image-{i:06d}.jpg")
        try:
            os.link(src, dst)
        except OSError:  # a file system without hard links
            shutil.copyfile(src, dst)
    open(marker, "w").close()  # a hidden file: predict's and annotate's folder walks leave it out
    return folder


def video(path: str, frames: int, seed: int) -> str:
    """A 640x480 mp4v video of `frames` frames at 30 fps: the photo, its face about 90 px, gliding over a ground."""
    import cv2
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    if os.path.exists(path):
        return path
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        face = np.asarray(Image.open(f).convert("RGB").resize((230, 270)))
    rng = np.random.default_rng(seed)
    ground = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
    ground[:] = rng.integers(0, 256, 3)
    fh, fw = face.shape[:2]
    tmp = path + ".part.mp4"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    if not writer.isOpened():
        raise SystemExit(f"OpenCV cannot write {tmp} with mp4v; install opencv with FFmpeg (the project's lock has it)")
    for t in range(frames):
        frame = ground.copy()
        # A slow figure-of-eight: the face moves a few pixels a frame, as in a filmed conversation.
        x = int((SIZE[0] - fw) * (0.5 + 0.45 * np.sin(t / 90)))
        y = int((SIZE[1] - fh) * (0.5 + 0.45 * np.sin(t / 45)))
        frame[y:y + fh, x:x + fw] = face
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    os.replace(tmp, path)
    return path


def _run_quiet(args: list[str], what: str) -> None:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")


def demo_model() -> str:
    """A model folder of the demo recipe (backbone, input size, crop settings), trained once for a few steps on
    synthetic examples: what `make run` would push, but for its weights."""
    model_dir = os.path.join(CACHE, "demo-recipe-model")
    if os.path.exists(os.path.join(model_dir, "model_config.json")):
        return model_dir
    from components.common import examples as ex
    from components.common.faces import FaceSettings
    from components.filter.params import SPEC as FILTER
    from components.train import synthetic
    from components.train.params import SPEC as TRAIN
    from pipeline.defaults import DEMO_PRESET, PRESETS

    preset = PRESETS[DEMO_PRESET]
    examples = os.path.join(CACHE, "demo-recipe-examples")
    aus = [int(a) for a in FILTER.defaults.aus.split(",")]
    synthetic.write_examples(examples, {"train": 64, "validation": 16, "test": 16}, size=preset["face_size"],
                             au_ids=aus)
    summary = ex.read_summary(examples)
    summary["parameters"] = {"faces": FaceSettings(size=int(preset["face_size"])).to_dict()}
    ex.write_summary(examples, summary)
    flags = [a for p in TRAIN.params if p.in_dag and p.dag_name in preset and p.dag_name != "epochs"
             for a in (p.cli_flag, str(preset[p.dag_name]))]
    _run_quiet(["-m", "components.train", "--examples", examples, "--output", model_dir, *flags, "--epochs", "1",
                "--checkpoint-dir", ""], "training the benchmark's model")
    return model_dir


# --- the children: one measurement each, its result one JSON line ---------------------------------------------------
def _cpu() -> float:
    """CPU seconds of this process, every thread (TensorFlow's and MediaPipe's) counted."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith("."))


def _settings(model: str):
    from components.common import faces, model as model_lib, registry

    model_dir, _ = registry.resolve_model(model)
    return faces.FaceSettings.from_dict(model_lib.read_model_config(model_dir).get("faces"))


def _detectors(model: str, threads: int):
    """The scorer's face-finding threads (facefinder.detect.Threads: each its own detector, made and run once) with
    the model's face settings, and the function that finds the faces of a picture in the calling thread's."""
    from components.common import inference
    from components.common.facefinder import detect

    faces = detect.Threads(threads, _settings(model).min_score, quiet=inference.library_noise)
    return faces.pool, lambda rgb: bool(faces.detector().detect(rgb)) if rgb is not None else False


def child_detect_images(folder: str, model: str, threads: int) -> dict:
    from components.common import inference

    inference.quiet_libraries()
    pool, found = _detectors(model, threads)
    files = _files(folder)

    def one(path):
        with open(path, "rb") as f:
            return found(inference.decode(f.read(), path)[0])

    start, cpu = time.perf_counter(), _cpu()
    faces = sum(pool.map(one, files))
    return {"items": len(files), "seconds": time.perf_counter() - start, "cpu": _cpu() - cpu, "faces": faces}


def child_score_images(folder: str, model: str, batch: int) -> dict:
    from components.common import inference

    inference.quiet_libraries()
    scorer = inference.Scorer(model, batch_size=batch)
    scorer.warmup()
    files = _files(folder)
    start, cpu, faces = time.perf_counter(), _cpu(), 0
    for i in range(0, len(files), scorer.chunk):  # as predict gives them
        names = files[i:i + scorer.chunk]
        data = []
        for path in names:
            with open(path, "rb") as f:
                data.append(f.read())
        faces += sum(bool(r["faces"]) for r in scorer.score(data, names))
    return {"items": len(files), "seconds": time.perf_counter() - start, "cpu": _cpu() - cpu, "faces": faces}


def child_detect_video(path: str, model: str, threads: int) -> dict:
    """OpenCV reads the frames one after another (one stream); the threads find their faces."""
    import collections

    import cv2

    from components.common import inference

    inference.quiet_libraries()
    pool, found = _detectors(model, threads)
    cap = cv2.VideoCapture(path)
    start, cpu, frames, faces = time.perf_counter(), _cpu(), 0, 0
    running = collections.deque()
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        running.append(pool.submit(found, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        frames += 1
        if len(running) > 4 * threads:  # a few frames ahead, not the whole video in memory
            faces += running.popleft().result()
    faces += sum(f.result() for f in running)
    cap.release()
    return {"items": frames, "seconds": time.perf_counter() - start, "cpu": _cpu() - cpu, "faces": faces}


def child_score_video(path: str, model: str, batch: int) -> dict:
    from components.common import inference

    inference.quiet_libraries()
    from components.predict import rows, video as videos

    scorer = inference.Scorer(model, batch_size=batch)
    scorer.warmup()
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        writer = rows.RowWriter(os.path.join(tmp, "rows.csv"), rows.columns(scorer.task, scorer.au_ids))
        start, cpu = time.perf_counter(), _cpu()
        summary = videos.score_video(scorer, path, path, writer)
        seconds, cpu = time.perf_counter() - start, _cpu() - cpu
        writer.close()
    return {"items": summary["sampled"], "seconds": seconds, "cpu": cpu, "faces": summary["with_face"]}


CHILDREN = {"detect-images": child_detect_images, "score-images": child_score_images,
            "detect-video": child_detect_video, "score-video": child_score_video}


# --- the parent -----------------------------------------------------------------------------------------------------
def measured(args: list[str], what: str, keep_stdout: bool = False) -> dict:
    """Runs a command (Python's arguments) and waits for it with wait4: wall seconds, seconds until its first byte on
    stdout (predict --csv writes its header once the model is loaded), CPU seconds, peak RSS in MB, the load average
    at its end, and the JSON of its last BENCH_JSON line (a child's)."""
    # Unbuffered, so the first byte comes when it is written; the CSV rows after it are read and dropped.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    kept, first = [], None
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, env=env)
        while chunk := proc.stdout.read1(1 << 16):
            first = first if first is not None else time.perf_counter() - start
            if keep_stdout:
                kept.append(chunk)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.stdout.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        tail = err.read().decode("utf-8", "replace")[-3000:]
    if proc.returncode not in (0, 1):  # 1: predict scored what it could, and says which it could not
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{tail}")
    result = {}
    for line in b"".join(kept).decode("utf-8", "replace").splitlines():
        if line.startswith(MARKER):
            result = json.loads(line[len(MARKER):])
    return {**result, "wall": wall, "first_output": first, "cpu_total": usage.ru_utime + usage.ru_stime,
            "rss_mb": usage.ru_maxrss / 1024, "load": os.getloadavg()[0]}


def child(kind: str, *args) -> dict:
    return measured([os.path.abspath(__file__), "--child", kind, *map(str, args)], kind, keep_stdout=True)


def cli(kind: str, model: str, inputs: str, startup: dict, work: str) -> dict:
    """predict's CLI on a folder, end to end; startup: its run on a folder of one image (cli_command()).

    The rate is the images over the time after its CSV header (written once the model is loaded and warm); without a
    header, the images beyond the first over the time beyond the one-image run's. CPU per image: the CPU seconds
    beyond the one-image run's over the images beyond the first.
    """
    run = measured(cli_command(kind, model, inputs, work), f"{kind} on {inputs}")
    items = len(_files(inputs))
    if run["first_output"] is not None:
        begun, seconds, timed = run["first_output"], run["wall"] - run["first_output"], items
    else:
        begun, seconds, timed = startup["wall"], run["wall"] - startup["wall"], items - 1
    cpu = (run["cpu_total"] - startup["cpu_total"]) * items / max(1, items - 1)
    # A few images take less than the noise of a start-up: then there is no rate to give (None: "n/a").
    return {**run, "items": items, "startup": begun, "seconds": seconds,
            "rate": timed / seconds if seconds > 0 and timed > 0 else None, "cpu": cpu if cpu > 0 else None}


def annotate(model: str, small: str, large: str, work: str) -> dict:
    """annotate's steady rate: the images between a small folder and a large one over the time between their runs.
    A run's start-up (Beam, a worker process per core, each importing TensorFlow and loading the model) is the same
    for both, so it drops out; it is given as the small run's time beyond its images at that rate."""
    runs = [measured(cli_command("annotate", model, folder, work), f"annotate on {folder}") for folder in
            (small, large)]
    items = [len(_files(folder)) for folder in (small, large)]
    seconds, cpu = runs[1]["wall"] - runs[0]["wall"], runs[1]["cpu_total"] - runs[0]["cpu_total"]
    rate_ = (items[1] - items[0]) / seconds if seconds > 0 and items[1] > items[0] else None
    cpu_each = cpu / (items[1] - items[0]) if items[1] > items[0] and cpu > 0 else None
    startup = runs[0]["wall"] - items[0] / rate_ if rate_ else None
    return {**runs[1], "items": items[1], "startup": startup, "seconds": seconds, "rate": rate_,
            "cpu": cpu_each * items[1] if cpu_each else None}


def cli_command(kind: str, model: str, folder: str, work: str) -> list[str]:
    if kind == "predict":
        return ["-m", "components.predict", "--model", model, "--csv", folder]
    out = os.path.join(work, f"annotate-{os.path.basename(folder)}")
    shutil.rmtree(out, ignore_errors=True)
    return ["-m", "components.annotate", "--images", folder, "--output", out, "--model", model]


def rate(r: dict) -> float | None:
    return r["rate"] if "rate" in r else r["items"] / max(1e-9, r["seconds"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="Registry model root, version or model folder (default: the `make run` model "
                                   "runs/registry/au-detector if it exists, else the demo recipe's, trained once).")
    p.add_argument("--photos", type=int, default=200, help="Distinct photos drawn; the small folder. Default: 200.")
    p.add_argument("--images", type=int, default=1000, help="Images of the folder the rates are measured on (links "
                                                             "to the photos). Default: 1000.")
    p.add_argument("--big-images", type=int, default=20000,
                   help="Images of the large folder predict's memory is measured on (0: none). Default: 20000.")
    p.add_argument("--frames", type=int, default=200, help="Frames of the small video. Default: 200.")
    p.add_argument("--big-frames", type=int, default=10000,
                   help="Frames of the large video, the rates' too (0: the small one only). Default: 10000.")
    p.add_argument("--annotate-images", type=int, default=5000,
                   help="Images of the second folder annotate runs on: its rate is the images between this and "
                        "--images over the time between the two runs. Default: 5000.")
    p.add_argument("--batch-size", type=int, default=32, help="predict's and annotate's batch size. Default: 32.")
    p.add_argument("--no-annotate", action="store_true", help="Leave annotate out.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the photos and the video's ground. Default: 0.")
    p.add_argument("--cache", default=CACHE,
                   help="Where the pictures, the videos and the model are kept. Default: %(default)s.")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        result = CHILDREN[kind](*(int(a) if a.isdigit() else a for a in rest))
        print(MARKER + json.dumps(result), flush=True)
        return 0

    started_load = os.getloadavg()
    if args.model:
        model, which = args.model, args.model
    elif os.path.isdir(MAKE_RUN_MODEL):
        model, which = MAKE_RUN_MODEL, "the `make run` model (runs/registry/au-detector)"
    else:
        model = demo_model()
        which = (f"the demo recipe's model ({os.path.relpath(model, ROOT)}: compactcnn, 128 px input, 160 px crops, "
                 "weights from a few synthetic steps)")
    cache = args.cache
    small = os.path.join(cache, f"photos-n{args.photos}-seed{args.seed}")
    sources = photos(small, args.photos, args.seed)
    folder = small if args.images == args.photos else linked(
        os.path.join(cache, f"links-n{args.images}-of{args.photos}-seed{args.seed}"), sources, args.images)
    big = linked(os.path.join(cache, f"links-n{args.big_images}-of{args.photos}-seed{args.seed}"), sources,
                 args.big_images) if args.big_images else None
    clip_frames = max(args.frames, args.big_frames)
    long_video = video(os.path.join(cache, f"video-n{clip_frames}-seed{args.seed}.mp4"), clip_frames, args.seed)
    short_video = video(os.path.join(cache, f"video-n{args.frames}-seed{args.seed}.mp4"), args.frames, args.seed)
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores; load average at the start {started_load[0]:.1f} (1 min), {started_load[1]:.1f} (5 min)",
          flush=True)
    print(f"model: {which}", flush=True)
    print(f"pictures: {args.photos} distinct 640x480 JPEGs with one face; folders of {args.images}"
          + (f" and {args.big_images}" if big else "") + " images are links to them; videos of "
          f"{args.frames} and {clip_frames} frames, 640x480 mp4v at {FPS:g} fps", flush=True)

    work = tempfile.mkdtemp(prefix="bench-predict-")
    rows: list[list[str]] = []

    def row(what, unit, r, bound=None, startup=None):
        per_cpu = 1000 * r["cpu"] / max(1, r["items"]) if r["cpu"] is not None else None
        share = cpu_share = "-"
        if bound:
            share = f"{rate(r) / rate(bound):.0%}" if rate(r) is not None else "n/a"
            cpu_share = f"{1000 * bound['cpu'] / bound['items'] / per_cpu:.0%}" if per_cpu else "n/a"
        rows.append([what, f"{r['items']:,}", unit, _num(rate(r)), share, _num(per_cpu), cpu_share,
                     f"{startup:.1f}" if startup is not None else "-", f"{r['rss_mb']:.0f}", f"{r['load']:.1f}"])
        found = f", {r['faces']} with a face" if "faces" in r else ""
        print(f"  done: {what}, {r['items']} {unit}{found}: {_num(rate(r))}/s, {_num(per_cpu)} CPU ms each (load "
              f"{r['load']:.1f})", flush=True)

    try:
        row("face detector alone, 1 thread (read + decode + detect)", "images",
            child("detect-images", folder, model, 1))
        det = child("detect-images", folder, model, cores)
        row(f"face detector alone, {cores} threads: the bound", "images", det)
        row("predict in-process (Scorer.score, files read)", "images",
            child("score-images", folder, model, args.batch_size), det)
        one = linked(os.path.join(cache, f"links-n1-of{args.photos}-seed{args.seed}"), sources, 1)
        startup = measured(cli_command("predict", model, one, work), "predict on one image")
        for target in dict.fromkeys((small, folder, big)):
            if target:
                r = cli("predict", model, target, startup, work)
                row("predict CLI --csv (rate after start-up)", "images", r, det, r["startup"])
        if not args.no_annotate:
            more = linked(os.path.join(cache, f"links-n{args.annotate_images}-of{args.photos}-seed{args.seed}"),
                          sources, args.annotate_images)
            r = annotate(model, folder, more, work)
            row(f"annotate CLI --images ({args.images:,} and {args.annotate_images:,}: the rate between)",
                "images", r, det, r["startup"])
        vdet = child("detect-video", long_video, model, cores)
        row(f"face detector alone, {cores} threads (OpenCV decode + detect)", "frames", vdet)
        for clip in dict.fromkeys((short_video, long_video)):
            row("predict in-process (score_video, every frame)", "frames",
                child("score-video", clip, model, args.batch_size), vdet)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows, ["run", "count", "of", "per s", "of detector alone", "CPU ms each", "of detector alone (CPU)",
                       "start-up s", "peak RSS MB", "load 1m"]))
    return 0


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def table(rows: list[list[str]], header: list[str]) -> str:
    import serve

    return serve.table(rows, header)


if __name__ == "__main__":
    sys.exit(main())
