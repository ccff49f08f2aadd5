"""In-the-wild demo scenes: deterministic, sized and boxed as specified, conditions at their shares, occluded AUs unknown, boxes where a face detector puts them, portraits unchanged."""
import argparse
import hashlib
import importlib.util
import os
import sys
import types

import numpy as np
import PIL
import pytest
from PIL import Image

from components.common import labels
from pipeline import defaults
from pipeline.demo import faces, generate, generate_demo, load_labels, scenes

ELEVEN = faces.FACE_AU_IDS
N = 200
SEED = 3


@pytest.fixture(scope="module")
def wild(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("wild") / "set")
    summary = generate_demo(out, size=N, seed=SEED, workers=1)
    return out, summary, load_labels(out)


def _files(d) -> dict:
    root = os.path.join(d, generate.IMAGES_DIR)
    return {n: open(os.path.join(root, n), "rb").read() for n in sorted(os.listdir(root))}


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 0.0


# ------------------------------------------------------------------------------------ determinism


# The same bytes whatever the process split: tests/integration/test_demo_generate.py.
def test_render_scene_draws_the_same_picture_and_truth_from_the_same_stream():
    inten = faces.sample_labels(1, 0).intensity[0]
    one, t1 = scenes.render_scene(inten, np.random.default_rng(4))
    two, t2 = scenes.render_scene(inten, np.random.default_rng(4))
    assert one.tobytes() == two.tobytes() and t1 == t2


def test_the_scene_is_part_of_the_cache_key(tmp_path):
    out = str(tmp_path / "set")
    generate_demo(out, size=6, seed=1, workers=1, scene="portrait")
    assert generate_demo(out, size=6, seed=1, workers=1, scene="portrait")["cached"]
    wild = generate_demo(out, size=6, seed=1, workers=1)
    assert not wild["cached"] and wild["scene"] == "wild"
    assert (load_labels(out)["scene"] == "wild").all()
    with pytest.raises(ValueError, match="unknown demo scene 'moon'"):
        generate_demo(out, size=6, seed=1, scene="moon")


# ------------------------------------------------------------------------------------ geometry


def test_scenes_are_web_sized_and_the_face_box_is_inside_and_small(wild):
    out, summary, df = wild
    assert df["width"].between(scenes.MIN_SIDE, scenes.MAX_SIDE).all()
    assert df["height"].between(scenes.MIN_SIDE, scenes.MAX_SIDE).all()
    assert (df["width"] != df["height"]).mean() > 0.9  # not square in general
    face = df[df["faces_in_scene"] > 0]
    x0, y0, x1, y1 = (face[c].to_numpy(np.float64) for c in ("face_x0", "face_y0", "face_x1", "face_y1"))
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= face["width"]).all() and (y1 <= face["height"]).all()
    assert (x1 > x0).all() and (y1 > y0).all()
    share = np.maximum(x1 - x0, y1 - y0) / np.minimum(face["width"], face["height"])
    assert share.min() >= scenes.FACE_MIN - 1e-3 and share.max() <= scenes.FACE_MAX + 1e-3
    assert share.min() < 0.2 and share.max() > 0.4  # the whole range is used
    fs = summary["face_size"]
    assert scenes.FACE_MIN - 1e-3 <= fs["min_share"] <= fs["max_share"] <= scenes.FACE_MAX + 1e-3
    # the stored sizes are the files' sizes; the scenes without a face have no box
    for row in df.head(20).itertuples():
        with Image.open(os.path.join(out, "images", row.name)) as im:
            assert im.size == (row.width, row.height)
    none = df[df["faces_in_scene"] == 0]
    assert len(none) >= 1 and none[["face_x0", "face_y0", "face_x1", "face_y1"]].isna().all().all()
    assert none[[f"AU{a}" for a in ELEVEN]].isin([0, 1]).all().all()  # still labelled, as EmotioNet has such rows


def test_small_faces_scenes_are_large_pictures_whose_face_is_10_to_22_percent(tmp_path):
    out = str(tmp_path / "small")
    summary = generate_demo(out, size=24, seed=2, workers=1, scene="small-faces")
    df = load_labels(out)
    size = scenes.SMALL_FACES
    assert (size.min_side, size.max_side, size.face_min, size.face_max) == (480, 1024, 0.10, 0.22)
    assert summary["scene"] == "small-faces" and (df["scene"] == "small-faces").all()
    assert df["width"].between(480, 1024).all() and df["height"].between(480, 1024).all()
    assert df["width"].max() > 800 or df["height"].max() > 800  # large pictures, not the default world's
    face = df[df["faces_in_scene"] > 0]
    x0, y0, x1, y1 = (face[c].to_numpy(np.float64) for c in ("face_x0", "face_y0", "face_x1", "face_y1"))
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= face["width"]).all() and (y1 <= face["height"]).all()
    side = np.maximum(x1 - x0, y1 - y0)
    share = side / np.minimum(face["width"], face["height"])
    assert share.min() >= 0.10 - 1e-3 and share.max() <= 0.22 + 1e-3
    assert side.min() >= 48 - 1  # every labelled face is one the face finder's tiles are meant to find
    fs = summary["face_size"]
    assert 0.10 - 1e-3 <= fs["min_share"] <= fs["max_share"] <= 0.22 + 1e-3
    # the default world (`make run`) keeps its sizes; the CLI draws the new one on request
    assert scenes.WILD == scenes.SceneSize(320, 640, 0.15, 0.45, (0.22, 0.36)) and scenes.SIZES["wild"] is scenes.WILD
    from pipeline.demo.__main__ import build_parser

    assert build_parser().parse_args(["generate", "--scene", "small-faces"]).scene == "small-faces"
    inten = faces.sample_labels(1, 0).intensity[0]
    # with a bystander, the labelled face is still the larger, inside the small-faces range
    for k in range(3):
        plan = scenes.ScenePlan(bystander=True)
        img, t = scenes.render_scene(inten, np.random.default_rng(k), plan, scenes.SMALL_FACES)
        lo, hi = scenes.SMALL_FACES.bystander_face
        assert lo - 1e-3 <= max(t.box[2] - t.box[0], t.box[3] - t.box[1]) / min(img.size) <= hi + 1e-3
        for b in t.other_boxes:
            assert max(b[2] - b[0], b[3] - b[1]) < max(t.box[2] - t.box[0], t.box[3] - t.box[1])


def test_a_bystander_is_smaller_and_beside_the_labelled_face():
    inten = faces.sample_labels(1, 0).intensity[0]
    placed = 0
    for k in range(6):
        img, t = scenes.render_scene(inten, np.random.default_rng(k), scenes.ScenePlan(bystander=True))
        assert t.faces_in_scene == 1 + len(t.other_boxes)
        for b in t.other_boxes:
            placed += 1
            assert max(b[2] - b[0], b[3] - b[1]) < max(t.box[2] - t.box[0], t.box[3] - t.box[1])
            assert _iou(b, t.box) == 0.0
            assert 0 <= b[0] < b[2] <= img.size[0] and 0 <= b[1] < b[3] <= img.size[1]
    assert placed >= 5


def test_each_au_still_changes_the_shaded_face_of_the_scenes():
    # the scenes' faces carry shadows the portraits lack; one AU at a time, same identity and stream
    def face(inten):
        layer, _ = faces.face_layer(inten, np.random.default_rng(11), 128, shaded=True)
        grey = Image.new("RGBA", layer.size, (128, 128, 128, 255))
        grey.alpha_composite(layer)
        return np.asarray(grey.convert("RGB"), np.int16)

    base = face(np.zeros(len(ELEVEN)))
    for j, au in enumerate(ELEVEN):
        inten = np.zeros(len(ELEVEN))
        inten[j] = 1.0
        changed = (np.abs(face(inten) - base).max(axis=2) > 25).sum()
        assert changed >= 15, f"AU{au} changes only {changed} pixels of the face"


# ------------------------------------------------------------------------------------ conditions


def test_each_condition_comes_at_its_share(wild):
    _, summary, df = wild
    c = summary["conditions"]
    n_face = int((df["faces_in_scene"] > 0).sum())

    def near(count, share, of=N, slack=0.35):
        want = share * of
        return abs(count - want) <= max(2, slack * want)

    assert near((df["tilt"].abs() >= scenes.TILT_MIN).sum(), scenes.TILTED_SHARE, n_face)
    assert near(df["grey"].sum(), scenes.GREY_SHARE)
    assert near((df["jpeg_quality"] > 0).sum(), scenes.LOW_QUALITY_SHARE)
    assert near((df["occluder"] != "").sum(), scenes.OCCLUDED_SHARE, n_face)
    assert near((df["faces_in_scene"] > 1).sum(), scenes.SEVERAL_FACES_SHARE)
    assert 1 <= (df["faces_in_scene"] == 0).sum() <= 4
    assert set(df["occluder"]) - {""} <= set(scenes.OCCLUDERS) and len(set(df["occluder"]) - {""}) >= 4
    assert df["tilt"].abs().max() <= scenes.TILT_MAX + 1e-3
    # the summary counts what labels.parquet holds
    assert c["grey"] == df["grey"].sum() and c["low_quality"] == (df["jpeg_quality"] > 0).sum()
    assert c["no_face"] == (df["faces_in_scene"] == 0).sum() and c["several_faces"] == (df["faces_in_scene"] > 1).sum()
    assert sum(c["occluded"].values()) == (df["occluder"] != "").sum()
    assert c["tilted"] == (df["tilt"].abs() >= scenes.TILT_MIN).sum()
    # render_scene without a plan draws the conditions at the same shares
    rng = np.random.default_rng(0)
    plans = [scenes.sample_plan(rng) for _ in range(4000)]
    assert abs(np.mean([p.grey for p in plans]) - scenes.GREY_SHARE) < 0.02
    assert abs(np.mean([bool(p.occluder) for p in plans]) - scenes.OCCLUDED_SHARE) < 0.02
    assert abs(np.mean([not p.face for p in plans]) - scenes.NO_FACE_SHARE) < 0.008


def test_grey_and_low_quality_are_in_the_served_bytes(wild):
    out, _, df = wild
    grey = df[df["grey"]]
    assert len(grey) >= 10
    single = 0
    for row in grey.itertuples():
        with Image.open(os.path.join(out, "images", row.name)) as im:
            single += im.mode == "L"
            rgb = np.asarray(im.convert("RGB"), np.int16)
        assert np.abs(rgb - rgb[..., :1]).max() <= 6, row.name  # grey, whatever the format made of it
    assert single >= len(grey) // 2  # JPEG and PNG ones are single-channel
    low = df[df["jpeg_quality"] > 0]
    assert len(low) >= 10 and (low["format"] == "jpeg").all() and low["jpeg_quality"].between(8, 25).all()

    def table_mean(name):
        with Image.open(os.path.join(out, "images", name)) as im:
            assert im.format == "JPEG"
            return float(np.mean(im.quantization[0]))

    assert min(table_mean(n) for n in low["name"]) > 2 * max(
        table_mean(n) for n in df[(df["format"] == "jpeg") & (df["jpeg_quality"] == 0)]["name"].head(30))
    # the web's formats are all still served
    assert set(df["format"]) == set(faces.FORMAT_SHARES)


def test_what_an_occluder_hides_is_unknown_in_labels_and_sheet(wild):
    _, _, df = wild
    eleven = df[[f"AU{a}" for a in ELEVEN]].to_numpy()
    hidden_seen = set()
    for i, row in enumerate(df.itertuples()):
        hidden = set(scenes.OCCLUDERS[row.occluder][1]) if row.occluder else set()
        hidden_seen |= hidden
        for j, au in enumerate(ELEVEN):
            if au in hidden:
                assert eleven[i, j] == labels.UNKNOWN, (row.name, au)
            else:
                assert eleven[i, j] in (0, 1), (row.name, au)
    assert {5, 6, 12, 25, 26} <= hidden_seen
    # occluders never hide the whole face: each keeps most AUs visible
    assert max(len(h) for _, h in scenes.OCCLUDERS.values()) <= 5


# ------------------------------------------------------------------------------------ detection


def _face_detection():
    """mediapipe's face solution without its Tasks API (which imports TensorFlow: ~10 s)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    stubs = [n for n in ("mediapipe.tasks", "mediapipe.tasks.python") if n not in sys.modules]
    for name in stubs:
        sys.modules[name] = types.ModuleType(name)
    try:
        from mediapipe.python.solutions import face_detection
    except ImportError as e:
        pytest.skip(f"mediapipe is not installed: {e}")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return face_detection


@pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype")
def test_a_face_detector_boxes_the_face_where_the_truth_says(wild):
    """Guards the truth box's definition and the drawing: BlazeFace (full range, then short range) finds the face."""
    fd = _face_detection()
    models = [fd.FaceDetection(model_selection=m, min_detection_confidence=0.5) for m in (1, 0)]
    out, _, df = wild
    rows = df[df["faces_in_scene"] > 0].head(60)
    ious = []
    for row in rows.itertuples():
        with Image.open(os.path.join(out, "images", row.name)) as im:
            rgb = np.ascontiguousarray(np.asarray(im.convert("RGB")))
        h, w = rgb.shape[:2]
        found = []
        for model in models:
            for d in model.process(rgb).detections or ():
                r = d.location_data.relative_bounding_box
                found.append((r.xmin * w, r.ymin * h, (r.xmin + r.width) * w, (r.ymin + r.height) * h))
            if found:
                break
        best = max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if found else None
        ious.append(_iou(best, (row.face_x0, row.face_y0, row.face_x1, row.face_y1)) if best else 0.0)
    ious = np.array(ious)
    assert (ious >= 0.5).mean() >= 0.9, f"recall {(ious >= 0.5).mean():.0%} at IoU 0.5; IoUs {np.round(ious, 2).tolist()}"
    assert ious[ious >= 0.5].mean() >= 0.75


# ------------------------------------------------------------------------------------ portraits


# Recorded before faces.py was refactored for scenes (Pillow 12.3.0, numpy 1.26.4): the portrait
# world must draw exactly what it drew.
RENDER_FACE_SHA256 = "c0913b4ae41c990467de7e13e285955d68fa1f4da3e3bdcf04a7c570e1ab77d0"
PORTRAIT_SET_SHA256 = "a7be4cb587bbfebde56a907d18956a81fc3aa0914f356d2408b30c9466e5e5c0"


def test_portraits_are_drawn_exactly_as_before(tmp_path):
    t = faces.sample_labels(40, 7)
    per = {}
    for i in range(40):
        for size in (128, 96, 160):
            img = faces.render_face(t.intensity[i], np.random.default_rng(1000 + i), size)
            per[f"{i}-{size}"] = hashlib.sha256(img.tobytes()).hexdigest()
    h = hashlib.sha256()
    for k in sorted(per):
        h.update(per[k].encode())
    assert h.hexdigest() == RENDER_FACE_SHA256
    out = str(tmp_path / "p")
    summary = generate_demo(out, size=30, seed=5, workers=1, scene="portrait")
    df = load_labels(out)
    assert (df["scene"] == "portrait").all() and summary["conditions"]["grey"] == 0
    assert (df["faces_in_scene"] == 1).all() and (df["occluder"] == "").all() and (df["jpeg_quality"] == 0).all()
    assert df["tilt"].abs().max() <= 12 + 1e-3
    assert (df["face_x0"] >= 0).all() and (df["face_x1"] <= df["width"]).all() and (df["face_x1"] > df["face_x0"]).all()
    if PIL.__version__ == "12.3.0":  # the encoders' bytes may legitimately differ in another Pillow
        files = _files(out)
        hh = hashlib.sha256()
        for n in sorted(files):
            hh.update(files[n])
        assert hh.hexdigest() == PORTRAIT_SET_SHA256


# ------------------------------------------------------------------------------------ command lines


def test_generate_cli_takes_the_scene(tmp_path, capsys):
    from pipeline.demo.__main__ import build_parser, main

    assert main(["generate", "--out", str(tmp_path / "p"), "--size", "3", "--scene", "portrait"]) == 0
    assert "portrait scenes" in capsys.readouterr().out
    assert set(load_labels(str(tmp_path / "p"))["width"]) <= {128, *generate.OTHER_SIZES}
    assert build_parser().parse_args(["generate"]).scene == "wild"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--scene", "moon"])
    assert "--scene wild" in build_parser().epilog


def test_pipeline_run_passes_the_demo_scene_and_names_the_folder_by_it(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("pipeline_cli", os.path.join(defaults.REPO_ROOT, "pipeline.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    import pipeline.demo as demo

    seen = {}

    class Stop(Exception):
        pass

    def fake(out_dir, size, seed, **kw):
        seen.update(out_dir=out_dir, size=size, seed=seed, **kw)
        raise Stop

    monkeypatch.setattr(demo, "generate_demo", fake)
    for argv, scene in (([], "wild"), (["--demo-scene", "portrait"], "portrait"),
                        (["--demo-scene", "small-faces"], "small-faces")):
        p = argparse.ArgumentParser()
        cli.add_run_arguments(p)
        args = p.parse_args(["--runs-dir", str(tmp_path), "--demo-size", "7", "--demo-seed", "2"] + argv)
        with pytest.raises(Stop):
            cli._run_on_demo(args, {}, str(tmp_path / "run"))
        assert seen["scene"] == scene
        assert os.path.basename(seen["out_dir"]) == f"size7-seed2-{scene}"
        assert (seen["size"], seen["seed"]) == (7, 2)
