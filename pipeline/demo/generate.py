"""Writes a demo set: in-the-wild scenes (or square portraits) in the web's formats plus labels.parquet (the ground truth), cached by size, seed and scene."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from components.common import labels
from pipeline import defaults
from pipeline.demo import faces, scenes

LABELS_FILE = "labels.parquet"
SUMMARY_FILE = "demo_summary.json"
IMAGES_DIR = "images"
# Bump when the drawing or the label model changes: a cached set of another version is redrawn.
GENERATOR_VERSION = 2
SCENES, DEFAULT_SCENE = defaults.DEMO_SCENES, defaults.DEMO_SCENE
# Portraits: a few come at other sizes, as web images do; the rest are image_size square.
OTHER_SIZES = (96, 160, 192)
OTHER_SIZE_SHARE = 0.12
# Below this many faces one process is faster than starting a pool.
PARALLEL_FROM = 400
CHUNK = 64


def image_name(index: int, fmt: str) -> str:
    return f"face-{index:05d}.{faces.FORMAT_EXT[fmt]}"


def _image_rng(seed: int, index: int) -> np.random.Generator:
    # One stream per image: the bytes do not depend on how the work is split across processes.
    return np.random.default_rng(np.random.SeedSequence([seed, 0xFACE, index]))


def _render_chunk(args) -> list[tuple]:
    """Renders and writes faces; returns (index, width, height, bytes, sha256, SceneTruth) per image."""
    images_dir, seed, image_size, scene, items = args
    out = []
    for index, fmt, inten, plan in items:
        rng = _image_rng(seed, index)
        if scene == "portrait":
            size = image_size
            if rng.random() < OTHER_SIZE_SHARE:
                size = int(OTHER_SIZES[rng.integers(len(OTHER_SIZES))])
            img, box, tilt = faces.render_portrait(np.asarray(inten), rng, size)
            truth = scenes.SceneTruth(box=box, tilt=round(tilt, 3), grey=False, jpeg_quality=0, occluder="",
                                      hidden_aus=(), faces_in_scene=1)
            data = faces.encode(img, fmt, rng)
        else:
            img, truth = scenes.render_scene(np.asarray(inten), rng, plan, scenes.SIZES[scene])
            data = scenes.encode_scene(img, truth, fmt, rng)
        path = os.path.join(images_dir, image_name(index, fmt))
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        out.append((index, img.size[0], img.size[1], len(data), hashlib.sha256(data).hexdigest(), truth))
    return out


def _cached(out_dir: str, size: int, seed: int, image_size: int, scene: str) -> dict | None:
    path = os.path.join(out_dir, SUMMARY_FILE)
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    want = {"size": size, "seed": seed, "image_size": image_size, "scene": scene, "generator_version": GENERATOR_VERSION}
    if any(summary.get(k) != v for k, v in want.items()):
        return None
    try:
        import pyarrow.parquet as pq

        names = pq.read_table(os.path.join(out_dir, LABELS_FILE), columns=["name"]).column("name").to_pylist()
    except (OSError, ValueError, KeyError):
        return None
    images = os.path.join(out_dir, IMAGES_DIR)
    if len(names) != size or not all(os.path.exists(os.path.join(images, n)) for n in names):
        return None
    summary["cached"] = True
    return summary


def generate_demo(out_dir: str, size: int = defaults.DEMO_SIZE, seed: int = defaults.DEMO_SEED,
                  image_size: int = defaults.DEMO_IMAGE_SIZE, workers: int = 0, scene: str = DEFAULT_SCENE) -> dict:
    """Writes `size` synthetic faces (images/) and their ground truth (labels.parquet) into out_dir.

    scene="wild" (the default): web photos of 320..640 px each way in which the face is 15-45% of
    the shorter side, some tilted, grey, low-quality JPEG, partly hidden (the AUs hidden are 999
    in labels.parquet), with a bystander or with no face (see pipeline/demo/scenes.py).
    scene="portrait": the face fills an image_size square (a few come at other sizes).
    scene="small-faces": the wild conditions in pictures of 480..1024 px each way whose face is
    10-22% of the shorter side (48-225 px), as in group photos and half-body shots.

    Deterministic: the same size, seed, image_size and scene give the same bytes. A folder that
    already holds that set is returned at once (summary["cached"] is True). workers=0 uses every
    core. Returns the summary also written to demo_summary.json (counts per format, prevalence per
    AU, counts per condition, the faces' size range).
    """
    if size < 1:
        raise ValueError(f"demo size {size} is too small; expected at least 1 face")
    if image_size < 32:
        raise ValueError(f"demo image size {image_size} px is too small; expected at least 32")
    if scene not in SCENES:
        raise ValueError(f"unknown demo scene {scene!r}; expected one of {', '.join(SCENES)}")
    cached = _cached(out_dir, size, seed, image_size, scene)
    if cached is not None:
        return cached
    import pandas as pd

    started = time.monotonic()
    images_dir = os.path.join(out_dir, IMAGES_DIR)
    os.makedirs(images_dir, exist_ok=True)
    # A stale summary must not vouch for a half-rewritten folder.
    if os.path.exists(os.path.join(out_dir, SUMMARY_FILE)):
        os.remove(os.path.join(out_dir, SUMMARY_FILE))

    truth = faces.sample_labels(size, seed)
    formats = faces.assign_formats(size, seed)
    plans = scenes.plan_scenes(size, seed, formats) if scene in scenes.SIZES else [None] * size
    items = [(i, formats[i], truth.intensity[i].tolist(), plans[i]) for i in range(size)]
    chunks = [(images_dir, seed, image_size, scene, items[k:k + CHUNK]) for k in range(0, size, CHUNK)]
    workers = workers or (os.cpu_count() or 1)
    # fork only from a single-threaded process without TensorFlow (fork would copy their threads
    # half-alive); spawn is no way out, it re-imports the caller's __main__, which may be a script.
    if workers > 1 and size >= PARALLEL_FROM and threading.active_count() == 1 and "tensorflow" not in sys.modules:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx) as pool:
            results = [r for chunk in pool.map(_render_chunk, chunks) for r in chunk]
    else:
        results = [r for chunk in chunks for r in _render_chunk(chunk)]
    results.sort(key=lambda r: r[0])
    seen = [r[5] for r in results]

    names = [image_name(i, formats[i]) for i in range(size)]
    keep = set(names)
    for stale in os.listdir(images_dir):  # faces of an earlier, different request
        if stale not in keep:
            os.remove(os.path.join(images_dir, stale))
    table = {
        "name": names,
        "format": formats,
        "width": [r[1] for r in results],
        "height": [r[2] for r in results],
        "bytes": [r[3] for r in results],
        "sha256": [r[4] for r in results],
        "expression": truth.expression,
        "scene": [scene] * size,
    }
    box = np.array([t.box for t in seen], dtype=np.float32).reshape(size, 4)
    for k, col in enumerate(("face_x0", "face_y0", "face_x1", "face_y1")):
        table[col] = box[:, k]
    table["tilt"] = np.array([t.tilt for t in seen], dtype=np.float32)
    table["grey"] = np.array([t.grey for t in seen], dtype=bool)
    table["jpeg_quality"] = np.array([t.jpeg_quality for t in seen], dtype=np.int16)
    table["occluder"] = [t.occluder for t in seen]
    table["faces_in_scene"] = np.array([t.faces_in_scene for t in seen], dtype=np.int16)
    au = np.full((size, len(labels.ALL_AU_IDS)), labels.UNKNOWN, dtype=np.int16)
    for j, au_id in enumerate(faces.FACE_AU_IDS):
        au[:, au_id - 1] = truth.active[:, j]
    for i, t in enumerate(seen):  # what an occluder hides is unknown, as EmotioNet marks it
        for au_id in t.hidden_aus:
            au[i, au_id - 1] = labels.UNKNOWN
    for k, col in enumerate(labels.AU_COLUMNS):
        table[col] = au[:, k]
    table["valence"] = truth.valence
    table["arousal"] = truth.arousal
    df = pd.DataFrame(table)
    tmp = os.path.join(out_dir, LABELS_FILE + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, os.path.join(out_dir, LABELS_FILE))

    summary = {
        "size": size,
        "seed": seed,
        "image_size": image_size,
        "scene": scene,
        "generator_version": GENERATOR_VERSION,
        "au_ids": list(faces.FACE_AU_IDS),
        "prevalence": {str(a): round(float(truth.active[:, j].mean()), 4) for j, a in enumerate(faces.FACE_AU_IDS)},
        "formats": {f: formats.count(f) for f in faces.FORMAT_SHARES},
        "expressions": {e: truth.expression.count(e) for e in faces.EXPRESSIONS},
        "conditions": _conditions(seen),
        "face_size": _face_size(seen, table["width"], table["height"]),
        "seconds": round(time.monotonic() - started, 2),
        "cached": False,
    }
    tmp = os.path.join(out_dir, SUMMARY_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(out_dir, SUMMARY_FILE))  # written last: the "done" marker
    return summary


def _conditions(seen: list) -> dict:
    """How many images show each condition (a scene may show several)."""
    return {
        "tilted": sum(abs(t.tilt) >= scenes.TILT_MIN for t in seen),
        "grey": sum(t.grey for t in seen),
        "low_quality": sum(bool(t.jpeg_quality) for t in seen),
        "occluded": {k: sum(t.occluder == k for t in seen) for k in scenes.OCCLUDERS},
        "several_faces": sum(t.faces_in_scene > 1 for t in seen),
        "no_face": sum(t.faces_in_scene == 0 for t in seen),
    }


def _face_size(seen: list, widths: list, heights: list) -> dict:
    """The labelled faces' box (its larger side) in px and as a share of the image's shorter side."""
    px, share = [], []
    for t, w, h in zip(seen, widths, heights):
        if t.faces_in_scene:
            side = max(t.box[2] - t.box[0], t.box[3] - t.box[1])
            px.append(side)
            share.append(side / min(w, h))
    if not px:
        return {"min_px": None, "max_px": None, "min_share": None, "max_share": None}
    return {"min_px": round(min(px), 1), "max_px": round(max(px), 1),
            "min_share": round(min(share), 3), "max_share": round(max(share), 3)}


def load_labels(demo_dir: str):
    """labels.parquet of a demo set as a DataFrame; a clear error when the folder holds none."""
    import pandas as pd

    path = os.path.join(demo_dir, LABELS_FILE)
    if not os.path.exists(os.path.join(demo_dir, SUMMARY_FILE)) or not os.path.exists(path):
        raise FileNotFoundError(
            f"{demo_dir} holds no complete demo set (no {SUMMARY_FILE} / {LABELS_FILE}); "
            f"create one with: python -m pipeline.demo generate --out {demo_dir}"
        )
    return pd.read_parquet(path)
