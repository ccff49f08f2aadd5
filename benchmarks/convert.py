"""Benchmark of the convert step: images/s of its Beam pipeline next to a plain single-process
tf.io.TFRecordWriter loop doing the same work, and the peak memory of each, at a few dataset sizes.

    python benchmarks/convert.py                       # demo sets of 2000, 8000 and 20000 faces, 128 px
    python benchmarks/convert.py --sizes 2000 --compare-modes
    python benchmarks/convert.py --beam-args="--direct_running_mode=multi_processing"

Each measurement runs in its own process, which does the work twice: "seconds" is the second
run (reading the manifest and ledger, converting, writing; Beam's pipeline start included),
"1st run s" the first, which also pays the process's one-time lazy imports. Memory is the
peak proportional set size (PSS) of the process and all its children, sampled from /proc
every 50 ms. Datasets are generated once (pipeline.demo) under benchmarks/.cache/convert/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "benchmarks", ".cache", "convert")
MODES = {
    "in_memory, 1 process": "--direct_running_mode=in_memory --direct_num_workers=1 --convert_processes=1",
    "multi_threading": "--direct_running_mode=multi_threading --direct_num_workers=0",
    "multi_processing": "--direct_running_mode=multi_processing --direct_num_workers=0",
}


def dataset(size: int, image_size: int, seed: int = 0, scene: str = "portrait", cache: str = CACHE) -> str:
    """A demo set of `size` faces (pipeline.demo: JPEG, CMYK JPEG, PNG, RGBA and palette PNG, WebP, GIF)
    laid out as ingest and download leave it: manifest/manifest.parquet and downloads/{images/, ledger.parquet}.
    scene: portrait (faces filling 128 px squares, what this benchmark measures) or wild (benchmarks/faces.py).
    """
    sys.path.insert(0, ROOT)
    import numpy as np
    import pandas as pd

    from components.common import labels
    from components.common.ledger import IMAGES_DIR, LEDGER_FILE
    from components.common.manifest import MANIFEST_FILE
    from pipeline.demo import generate

    root = os.path.join(cache, f"demo-n{size}-px{image_size}" + (f"-seed{seed}-{scene}" if (seed, scene) != (0, "portrait") else ""))
    done = os.path.join(root, "downloads", LEDGER_FILE)
    if os.path.exists(done):
        return root
    print(f"generating a demo set of {size} faces of {image_size} px in {root} ...", file=sys.stderr, flush=True)
    demo_dir = os.path.join(root, "demo")
    generate.generate_demo(demo_dir, size=size, seed=seed, image_size=image_size, scene=scene)
    truth = generate.load_labels(demo_dir)
    urls = [f"http://127.0.0.1/demo/{name}" for name in truth["name"]]
    keys = [labels.image_key(u) for u in urls]
    exts = [name.rsplit(".", 1)[1] for name in truth["name"]]
    manifest = pd.DataFrame({"key": keys, "url": urls})
    for column in labels.AU_COLUMNS:
        manifest[column] = truth[column].astype(np.int16)
    manifest["valence"] = truth["valence"].astype(np.float32)
    manifest["arousal"] = truth["arousal"].astype(np.float32)
    manifest["row"] = np.arange(2, size + 2)
    os.makedirs(os.path.join(root, "manifest"), exist_ok=True)
    manifest.to_parquet(os.path.join(root, "manifest", MANIFEST_FILE), index=False)
    images = os.path.join(root, "downloads", IMAGES_DIR)
    os.makedirs(images, exist_ok=True)
    for name, key, ext in zip(truth["name"], keys, exts):
        target = os.path.join(images, f"{key}.{ext}")
        if not os.path.exists(target):
            os.link(os.path.join(demo_dir, generate.IMAGES_DIR, name), target)  # no second copy of the bytes
    now = pd.Timestamp.now(tz="UTC")
    ledger = pd.DataFrame({
        "key": keys, "url": urls, "status": "ok", "error_class": "ok", "http_status": 200, "attempts": 1,
        "bytes": truth["bytes"], "sha256": truth["sha256"], "format": exts, "width": truth["width"],
        "height": truth["height"], "first_attempt": now, "last_attempt": now, "message": "",
    })
    ledger.to_parquet(done + ".tmp", index=False)
    os.replace(done + ".tmp", done)
    return root


# --- the two contenders, each run in a child process -------------------------------------------


def child_loop(data: str, out: str) -> float:
    """The plain way: one process, one image at a time, tf.train.Example and tf.io.TFRecordWriter."""
    import numpy as np
    import tensorflow as tf

    from components.common import examples, imaging, labels, ledger
    from components.common.manifest import read_manifest
    from components.convert import logic, parts

    start = time.perf_counter()
    manifest = read_manifest(os.path.join(data, "manifest"))
    downloaded = ledger.read_downloaded(os.path.join(data, "downloads"), logic.ASSUMED_IMAGE_BYTES)
    work, _ = logic.build_work_list(manifest, downloaded, 0.15, 0.15)
    images = os.path.join(data, "downloads", ledger.IMAGES_DIR)
    os.makedirs(out, exist_ok=True)
    writers = [tf.io.TFRecordWriter(os.path.join(out, examples.shard_name(s, 0, 1))) for s in examples.SPLITS]
    written = 0
    for key, ext, split, au, va in zip(work.keys, work.ext, work.split, work.au, work.va):
        key = key.decode()
        data_bytes = parts.read_image(os.path.join(images, f"{key}.{ledger.FORMATS[ext]}"))
        if data_bytes is None:
            continue
        try:
            image = imaging.to_rgb_jpeg(data_bytes)
        except imaging.UndecodableImage:
            continue
        example = examples.make_example(image.jpeg, image.height, image.width, key, labels.ALL_AU_IDS,
                                        au.tolist(), None if np.isnan(va).any() else va.tolist())
        writers[split].write(example.SerializeToString())
        written += 1
    for w in writers:
        w.close()
    return time.perf_counter() - start, written


def child_convert(data: str, out: str, beam_args: str):
    # Imports are process start-up, as TensorFlow's is for the loop; starting Beam's workers is not.
    import apache_beam.runners.portability.fn_api_runner  # noqa: F401

    from components.common.faces import FaceSettings
    from components.convert import logic, transforms  # noqa: F401

    start = time.perf_counter()
    # The same work as the loop: whole images (benchmarks/faces.py measures the face crop).
    summary = logic.run(os.path.join(data, "manifest"), os.path.join(data, "downloads"), out, beam_args=beam_args,
                        faces=FaceSettings(mode="whole"))
    return time.perf_counter() - start, summary["counters"]["examples_written"]


# --- measuring ---------------------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    """Memory of pid and all its descendants (proportional set size), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        total += _pss(p)
    return total


def _pss(pid: int) -> int:
    """Proportional set size: forked children share their parent's pages, and RSS would count them twice."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def measure(kind: str, data: str, beam_args: str = "") -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-W", "ignore", os.path.abspath(__file__), "--child", kind, "--data", data,
               "--out", out, f"--beam-args={beam_args}"]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        peak = [0]

        def sample():
            while proc.poll() is None:
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout, stderr = proc.communicate()
        sampler.join()
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} failed:\n{stderr.decode()[-3000:]}")
        result = json.loads(stdout.decode().strip().splitlines()[-1])
        result.update(wall=time.perf_counter() - started, peak_mb=peak[0] / 2**20)
        return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,8000,20000", help="Dataset sizes (images), comma-separated.")
    parser.add_argument("--image-size", type=int, default=128, help="Side of the demo faces in pixels.")
    parser.add_argument("--beam-args", default=None, help="Beam options of the convert run (default: the step's own).")
    parser.add_argument("--compare-modes", action="store_true",
                        help="Also run convert in each DirectRunner mode: " + ", ".join(MODES))
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each measurement; the fastest is shown.")
    parser.add_argument("--child", choices=("loop", "convert"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        # Twice: the first run also pays one-time costs of the process (lazy imports, the page cache).
        times = []
        for run in range(2):
            out = os.path.join(args.out, str(run))
            seconds, written = (child_loop(args.data, out) if args.child == "loop"
                                else child_convert(args.data, out, args.beam_args or ""))
            times.append(seconds)
        print(json.dumps({"first": times[0], "seconds": times[1], "examples": written}))
        return 0

    variants = [("convert (step default)", args.beam_args or "")]
    if args.compare_modes:
        variants += [(f"convert {name}", flags) for name, flags in MODES.items()]
    print(f"cores: {len(os.sched_getaffinity(0))}  load average: {os.getloadavg()[0]:.1f}  "
          f"demo faces of {args.image_size} px (68 % RGB JPEG, the rest PNG/RGBA/palette/CMYK/WebP/GIF)")
    header = (f"{'images':>7}  {'run':<28} {'seconds':>8} {'images/s':>9} {'vs loop':>8} {'1st run s':>9} "
              f"{'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for size in (int(s) for s in args.sizes.split(",")):
        data = dataset(size, args.image_size)
        rows = [("loop (tf.io.TFRecordWriter)", "loop", "")] + [(name, "convert", flags) for name, flags in variants]
        loop_rate = None
        for name, kind, flags in rows:
            best = min((measure(kind, data, flags) for _ in range(args.repeats)), key=lambda r: r["seconds"])
            rate = best["examples"] / best["seconds"]
            loop_rate = loop_rate or rate
            print(f"{size:>7}  {name:<28} {best['seconds']:>8.2f} {rate:>9.0f} {rate / loop_rate:>7.2f}x "
                  f"{best['first']:>9.2f} {best['peak_mb']:>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
