"""Tests of the shared scorer (components/common/inference.py): every face of a picture, whole-picture models,
bad images that never raise, thresholds, frames, batching, and the library noise it keeps off the console."""
from __future__ import annotations

import io
import itertools
import os
import threading

import numpy as np
import pytest

from components.common import inference
from components.common.faces import FaceSettings

import face_media as media  # tests/conftest.py puts tests/data/evaluate on the path
import tiny_model as tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    return {
        "crop": tiny.make_model(str(root / "crop"), tiny.GOOD, faces=FaceSettings().to_dict()),
        "crop_whole": tiny.make_model(str(root / "crop_whole"), tiny.GOOD,
                                      faces=FaceSettings(no_face="whole").to_dict()),
        "whole": tiny.make_model(str(root / "whole"), tiny.GOOD),  # made before faces: the whole picture
        "va": tiny.make_model(str(root / "va"), tiny.GOOD, task="va"),
        "root": root,
    }


@pytest.fixture(scope="module")
def crop(models):
    return inference.Scorer(models["crop"])


def _flat(rgb, size=(64, 48), fmt="JPEG") -> bytes:
    from PIL import Image

    return media.jpeg(Image.new("RGB", size, rgb), fmt)


def _centre(box):
    x, y, w, h = box
    return x + w / 2, y + h / 2


def test_every_face_of_a_group_picture_is_scored_largest_first(crop):
    group, places = media.group()
    photo, pic = crop.score([media.photo_bytes(), group], ["hopper.jpg", "group.jpg"])

    assert (photo["image"], photo["width"], photo["height"], photo["error"]) == ("hopper.jpg", 512, 600, None)
    (face,) = photo["faces"]
    cx, cy = _centre(face["box"])
    assert 200 < cx < 330 and 160 < cy < 300, face["box"]  # her face, in the photo's pixels
    assert len(face["landmarks"]) == 6 and all(len(p) == 2 for p in face["landmarks"])
    assert 0.5 <= face["score"] <= 1 and face["status"] == "cropped"
    assert set(face["probabilities"]) == {"AU1", "AU2", "AU12"}
    assert face["active"] == [k for k, p in face["probabilities"].items() if p >= crop.thresholds[k]]

    assert pic["faces_found"] == 3 and [f["face"] for f in pic["faces"]] == [0, 1, 2]
    areas = [f["box"][2] * f["box"][3] for f in pic["faces"]]
    assert areas == sorted(areas, reverse=True)
    for f, (x0, y0, x1, y1) in zip(pic["faces"], places):  # the largest copy is the leftmost
        cx, cy = _centre(f["box"])
        assert x0 < cx < x1 and y0 < cy < y1, (f["box"], (x0, y0, x1, y1))

    largest = inference.Scorer(crop.model_dir, which_faces="largest")
    (only,) = largest.score([group], ["group.jpg"])[0]["faces"]
    assert only["box"] == pic["faces"][0]["box"]


def test_faces_are_batched_and_batches_change_nothing(models, crop, monkeypatch):
    group, _ = media.group()
    images = [group, media.photo_bytes(), group]
    sizes = []
    real = inference.model.run_signature

    def counting(signature, jpegs, task):
        sizes.append(len(jpegs))
        return real(signature, jpegs, task)

    monkeypatch.setattr(inference.model, "run_signature", counting)
    one_by_one = inference.Scorer(models["crop"], batch_size=1).score(images, ["a", "b", "c"])
    assert sizes == [1] * 7
    sizes.clear()
    by_four = inference.Scorer(models["crop"], batch_size=4).score(images, ["a", "b", "c"])
    assert sizes == [4, 3]  # 7 faces of three pictures, four at a time
    for a, b in zip(one_by_one, by_four):
        for fa, fb in zip(a["faces"], b["faces"]):
            assert fa["probabilities"] == pytest.approx(fb["probabilities"], abs=1e-4)


def test_threads_find_the_faces_each_with_its_own_detector_and_change_nothing(models, monkeypatch):
    from components.common.facefinder import detect

    group, _ = media.group()
    images = [group, media.photo_bytes(), _flat((9, 9, 9)), group, media.photo_bytes()] * 3
    names = [f"p{i}.jpg" for i in range(len(images))]
    threaded = inference.Scorer(models["crop"], workers=3, batch_size=4)
    assert threaded.chunk == 4 * inference.CHUNK_BATCHES
    detectors = {}
    real = detect.Threads.detector

    def which(self):
        d = real(self)
        detectors.setdefault(threading.current_thread(), set()).add(id(d))
        return d

    monkeypatch.setattr(detect.Threads, "detector", which)
    threaded.warmup()  # starts every thread, each with its detector
    assert len(detectors) == 3 and all(t.name.startswith("faces") for t in detectors)
    three = threaded.score(images, names)
    assert all(len(ids) == 1 for ids in detectors.values()), "a thread changed detectors"
    assert len(set().union(*detectors.values())) == len(detectors) == 3, "a detector shared between threads"
    monkeypatch.undo()

    one = inference.Scorer(models["crop"], workers=1, batch_size=4).score(images, names)
    assert [r["image"] for r in three] == names  # in the order given
    for a, b in zip(one, three):
        assert [f["box"] for f in a["faces"]] == [f["box"] for f in b["faces"]]
        for fa, fb in zip(a["faces"], b["faces"]):
            assert fa["probabilities"] == pytest.approx(fb["probabilities"], abs=1e-4)

    threaded.close()
    assert not [t for t in detectors if t.is_alive()]
    assert threaded.score([group], ["again.jpg"])[0]["faces_found"] == 3  # a call after close() starts them again
    threaded.close()


def test_the_model_runs_while_the_threads_are_still_finding_faces(models, monkeypatch):
    """The last picture's face search waits for the model's first batch: a scorer that ran the model only once every
    picture was prepared would never release it (and the test fails on the timeout instead of hanging)."""
    scorer = inference.Scorer(models["crop"], workers=2, batch_size=1)
    first_batch = threading.Event()
    real_run, real_prepare = inference.model.run_signature, scorer._prepare
    images = [media.photo_bytes()] * 6

    def run(signature, jpegs, task):
        first_batch.set()
        return real_run(signature, jpegs, task)

    def prepare(data, name, *rest):
        if name == "last.jpg":
            assert first_batch.wait(timeout=60), "the model did not run before every picture was prepared"
        return real_prepare(data, name, *rest)

    monkeypatch.setattr(inference.model, "run_signature", run)
    scorer._prepare = prepare
    results = scorer.score(images, [f"{i}.jpg" for i in range(5)] + ["last.jpg"])
    assert [len(r["faces"]) for r in results] == [1] * 6
    assert all(r["faces"][0]["probabilities"] for r in results)
    scorer.close()
    with pytest.raises(ValueError, match="workers"):
        inference.Scorer(models["crop"], workers=0)


def test_bad_images_never_raise_and_say_why(crop, tmp_path):
    from PIL import Image

    whole = media.photo_bytes()
    huge = io.BytesIO()
    Image.new("1", (10000, 10000)).save(huge, format="PNG")  # 100 megapixels in a few kB
    images = {"empty.jpg": b"", "notes.txt": b"not an image", "dot.png": _flat((9, 9, 9), (1, 1), "PNG"),
              "huge.png": huge.getvalue(), "cut.jpg": whole[: len(whole) // 3], "ok.jpg": whole}
    results = crop.score(list(images.values()), list(images))
    by_name = {r["image"]: r for r in results}
    expected = {"empty.jpg": "not_image", "notes.txt": "not_image", "dot.png": "too_small", "huge.png": "too_large",
                "cut.jpg": "corrupt"}
    for name, reason in expected.items():
        r = by_name[name]
        assert r["reason"] == reason and r["faces"] == [], r
        assert r["error"].startswith(name) and ";" in r["error"], r["error"]  # names the file, then what to do
    assert "10000x10000" in by_name["huge.png"]["error"] and "1x1" in by_name["dot.png"]["error"]
    assert by_name["ok.jpg"]["error"] is None and len(by_name["ok.jpg"]["faces"]) == 1


def test_a_picture_without_a_face(models, crop):
    (wall,) = crop.score([_flat(media.BLUE)], ["wall.jpg"])
    assert wall["faces"] == [] and wall["error"] is None and wall["reason"] == "no_face"
    # a model trained with --no-face whole scores such a picture whole
    (whole,) = inference.Scorer(models["crop_whole"]).score([_flat(media.BLUE)], ["wall.jpg"])
    (face,) = whole["faces"]
    assert face["status"] == "no_face_whole" and face["box"] == [0.0, 0.0, 64.0, 48.0] and face["active"] == ["AU12"]
    assert whole["reason"] == "no_face"


def test_a_model_trained_on_whole_pictures_scores_the_whole_picture(models):
    scorer = inference.Scorer(models["whole"])
    assert scorer.settings.mode == "whole"
    red, blue = scorer.score([_flat((255, 0, 0)), _flat(media.BLUE, fmt="PNG")], ["red.jpg", "blue.png"])
    (face,) = red["faces"]
    assert face == {**face, "face": 0, "status": "whole", "box": [0.0, 0.0, 64.0, 48.0], "landmarks": [],
                    "score": None, "active": ["AU1"]}
    assert face["probabilities"]["AU1"] > 0.99 and blue["faces"][0]["active"] == ["AU12"]


def test_thresholds_versions_and_registry_roots(models, tmp_path):
    from components.push import logic as push_logic

    evaluation = tiny.make_evaluation(str(tmp_path / "evaluation"), True)  # tuned: AU1 0.4, AU2 0.6, AU12 0.5
    record = push_logic.run(models["whole"], evaluation, None, destination=str(tmp_path / "registry"),
                            model_name="au")
    by_root = inference.Scorer(str(tmp_path / "registry" / "au"))
    assert by_root.version == record["version"] and by_root.au_ids == [1, 2, 12]
    assert by_root.thresholds == {"AU1": 0.4, "AU2": 0.6, "AU12": 0.5}
    assert "tuned" in by_root.threshold_source and by_root.config["task"] == "au"
    by_name = inference.Scorer(str(tmp_path / "registry"), model_name="au")
    assert by_name.model_dir == by_root.model_dir == record["uri"]
    plain = inference.Scorer(models["whole"], threshold=0.999)
    assert plain.version is None and plain.thresholds == {"AU1": 0.999, "AU2": 0.999, "AU12": 0.999}
    (red,) = plain.score([_flat((255, 0, 0))], ["red.jpg"])
    assert 0.99 < red["faces"][0]["probabilities"]["AU1"] < 0.999 and red["faces"][0]["active"] == []

    os.makedirs(tmp_path / "half" / "au" / "20260101T000000Z-half" / "saved_model")
    with pytest.raises(inference.ModelError, match="has no LATEST"):
        inference.Scorer(str(tmp_path / "half" / "au"))
    with pytest.raises(inference.ModelError, match="is not a model"):
        inference.Scorer(str(tmp_path / "nothing"))


def test_a_valence_arousal_model(models):
    (r,) = inference.Scorer(models["va"]).score([_flat((255, 0, 0))], ["red.jpg"])
    (face,) = r["faces"]
    assert face["probabilities"] == {} and face["active"] == []
    assert -1 <= face["valence"] <= 1 and -1 <= face["arousal"] <= 1


def test_frames_are_scored_as_pictures(crop):
    from PIL import Image

    group, places = media.group()
    rgb = np.asarray(Image.open(io.BytesIO(group)).convert("RGB"))
    frame, grey, tiny_frame = crop.score_frames([rgb, rgb[:, :, 0], rgb[:5, :5]], ["f0", "f1", "f2"])
    assert len(frame["faces"]) == 3 and frame["error"] is None
    assert grey["reason"] == "not_image" and "f1" in grey["error"]
    assert tiny_frame["reason"] == "too_small"
    from_bytes = crop.score([group], ["g"])[0]
    for a, b in zip(frame["faces"], from_bytes["faces"]):
        assert a["box"] == pytest.approx(b["box"], abs=3)


def test_a_failing_model_fails_only_its_image(models, monkeypatch):
    scorer = inference.Scorer(models["whole"])
    poison = _flat((0, 255, 0))
    real = inference.model.run_signature

    def fragile(signature, jpegs, task):
        if poison in jpegs:
            raise ValueError("cannot decode")
        return real(signature, jpegs, task)

    monkeypatch.setattr(inference.model, "run_signature", fragile)
    red, green, blue = scorer.score([_flat((255, 0, 0)), poison, _flat(media.BLUE)], ["r.jpg", "g.jpg", "b.jpg"])
    assert red["faces"][0]["active"] == ["AU1"] and blue["faces"][0]["active"] == ["AU12"]
    assert green["reason"] == "model_failed" and green["faces"] == [] and "g.jpg" in green["error"]


def test_exif_orientation_is_applied():
    from PIL import Image

    im = Image.new("RGB", (60, 30), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: 30 wide, 60 high
    out = io.BytesIO()
    im.save(out, format="JPEG", exif=exif)
    rgb, bad = inference.decode(out.getvalue(), "turned.jpg")
    assert bad is None and rgb.shape == (60, 30, 3)


def test_warmup_and_describe(crop):
    crop.warmup()
    d = crop.describe()
    assert d["faces"]["mode"] == "crop" and d["which_faces"] == "all" and d["au_ids"] == [1, 2, 12]
    with pytest.raises(ValueError, match="which_faces"):
        inference.Scorer(crop.model_dir, which_faces="some")


def test_library_noise_is_dropped_and_real_errors_are_kept(monkeypatch, capfd):
    monkeypatch.setattr(inference, "_quiet", True)
    with inference.library_noise():
        os.write(2, b"E external/cuda_dnn.cc:10575] Unable to register cuDNN factory: Attempting to register\n")
        with inference.library_noise():  # nested (the detector inside warmup): one redirection
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"E something real went wrong\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "something real went wrong" in err and "cuDNN" not in err and "XNNPACK" not in err
    assert err.index("something real") < err.index("after")  # stderr is the console's again


def test_each_face_thread_makes_and_first_runs_its_detector_inside_one_quiet_window(monkeypatch):
    # MediaPipe opens a graph in threads of its own after the constructor returns, and they write TFLite's banner
    # then: a window closed between making the detector and its first run let it (or half of it) through.
    from components.common.facefinder import detect

    inside, events, lock, opened = threading.local(), [], threading.Lock(), itertools.count(1)

    class Window:  # one at a time, as library_noise's
        def __enter__(self):
            lock.acquire()
            inside.window = next(opened)

        def __exit__(self, *exc):
            inside.window = None
            lock.release()

    def record(what):
        events.append((what, threading.current_thread().name, getattr(inside, "window", None)))

    class Fake:
        def detect(self, rgb):
            record("detect")
            return []

    def make(min_score):
        record("make")
        return Fake()

    monkeypatch.setattr(detect, "make", make)
    threads = detect.Threads(3, quiet=Window)
    try:
        names = {name for _, name, _ in events}
        assert len(names) == 3 and all(name.startswith("faces") for name in names)
        for name in names:
            (made, window), (ran, same) = [(what, w) for what, n, w in events if n == name]
            assert (made, ran) == ("make", "detect") and window is not None and same == window, events
        events.clear()
        list(threads.pool.map(lambda _: threads.detector().detect(None), range(6)))
        assert [what for what, _, _ in events] == ["detect"] * 6  # made once per thread, not again
    finally:
        threads.shutdown()


def test_real_detectors_in_four_threads_leave_the_console_clean():
    # The regression as a user met it: TFLite's "Created TensorFlow Lite XNNPACK delegate" on predict's console.
    # Before the fix it came through in about one start in three; three starts here.
    import subprocess
    import sys

    script = ("from components.common import inference\n"
              "inference.quiet_libraries()\n"
              "import numpy as np\n"
              "from components.common.facefinder import detect\n"
              "threads = detect.Threads(4, quiet=inference.library_noise)\n"
              "rgb = np.full((480, 640, 3), 100, np.uint8)\n"
              "list(threads.pool.map(lambda _: threads.detector().detect(rgb), range(8)))\n"
              "threads.shutdown()\n"
              "print('done')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "GLOG_minloglevel")}
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                              cwd=REPO)
        assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]
        assert done.stderr == "", done.stderr
