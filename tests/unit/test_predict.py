"""Tests of predict: a pushed model (via LATEST, a version, or a model folder) on every face of images, folders,
globs and videos; its console, JSON, CSV and Parquet; every bad input named and counted by reason."""
from __future__ import annotations

import csv
import io
import json
import os

import pytest

from components.common import inference
from components.common.faces import FaceSettings
from components.predict import logic, video
from components.predict import rows as table
from components.predict.__main__ import main
from components.push import logic as push_logic

import face_media as media  # tests/conftest.py puts tests/data/evaluate on the path
import tiny_model as tiny


@pytest.fixture(autouse=True)
def _libraries_as_they_are(monkeypatch):
    # The CLI quiets TensorFlow and the Google libraries for the whole process: not inside a test session.
    monkeypatch.setattr(inference, "quiet_libraries", lambda verbose=False: None)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    model = tiny.make_model(str(root / "model"), tiny.GOOD)  # whole pictures: flat colours score as they look
    # Tuned thresholds stored with the model: AU1 0.4, AU2 0.6, AU12 0.5.
    evaluation = tiny.make_evaluation(str(root / "evaluation"), True)
    record = push_logic.run(model, evaluation, None, destination=str(root / "registry"), model_name="au")
    images = root / "images"
    images.mkdir()
    (images / "red.jpg").write_bytes(tiny.jpeg((255, 0, 0), size=32))
    (images / "blue.png").write_bytes(tiny.jpeg((0, 0, 255), size=32, fmt="PNG"))
    (images / "notes.txt").write_text("not an image")
    return {"root": root, "model": model, "model_root": str(root / "registry" / "au"), "record": record,
            "images": images}


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """A model trained on face crops, and a folder of a portrait, a group of three and a blue wall."""
    from PIL import Image

    root = tmp_path_factory.mktemp("faces")
    model = tiny.make_model(str(root / "model"), tiny.GOOD, faces=FaceSettings().to_dict())
    pictures = root / "pictures"
    pictures.mkdir()
    (pictures / "hopper.jpg").write_bytes(media.photo_bytes())
    group, places = media.group()
    (pictures / "group.jpg").write_bytes(group)
    Image.new("RGB", (300, 200), media.BLUE).save(pictures / "wall.png")
    return {"root": root, "model": model, "pictures": pictures, "places": places}


def test_predict_follows_latest_and_uses_the_tuned_thresholds(pushed, capsys):
    red, blue = str(pushed["images"] / "red.jpg"), str(pushed["images"] / "blue.png")
    assert main(["--model", pushed["model_root"], red, blue]) == 0
    out = capsys.readouterr().out
    assert f"version {pushed['record']['version']}" in out and "tuned on the validation split" in out
    assert "inner brow raiser" in out and "lip corner puller" in out
    assert "active: AU1\n" in out and "active: AU12" in out and "the whole picture" in out

    assert main(["--model", pushed["model_root"], "--json", red, blue]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == pushed["record"]["version"] and result["au_ids"] == tiny.AU_IDS
    assert result["thresholds"] == {"AU1": 0.4, "AU2": 0.6, "AU12": 0.5}
    first = result["images"][0]
    assert first["image"] == red and first["error"] is None
    (face,) = first["faces"]
    assert face["active"] == ["AU1"] and face["probabilities"]["AU1"] > 0.99 and face["box"] == [0, 0, 32, 32]
    assert result["images"][1]["faces"][0]["active"] == ["AU12"]  # a PNG is re-encoded to the JPEG it decodes
    assert result["counts"]["images"] == 2 and result["counts"]["errors"] == 0


def test_predict_on_a_version_folder_and_a_plain_model_folder(pushed):
    red = [str(pushed["images"] / "red.jpg")]
    by_version = logic.predict(pushed["record"]["uri"], red)
    assert by_version["version"] == pushed["record"]["version"]
    plain = logic.predict(pushed["model"], red, threshold=0.999)
    assert plain["version"] is None and plain["threshold_source"].startswith("0.999")
    p_plain = plain["images"][0]["faces"][0]["probabilities"]["AU1"]
    assert p_plain == pytest.approx(by_version["images"][0]["faces"][0]["probabilities"]["AU1"])


def test_errors_are_one_message_and_exit_2(pushed, tmp_path, capsys):
    red = str(pushed["images"] / "red.jpg")
    assert main(["--model", pushed["model_root"], str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg does not exist" in capsys.readouterr().err
    assert main(["--model", pushed["model_root"], str(pushed["images"] / "notes.txt")]) == 2
    assert "notes.txt is not an image" in capsys.readouterr().out
    # A registry whose only push never finished: no LATEST.
    os.makedirs(tmp_path / "registry" / "au" / "20260101T000000Z-half" / "saved_model")
    assert main(["--model", str(tmp_path / "registry" / "au"), red]) == 2
    assert "has no LATEST" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nothing"), red]) == 2
    assert "is not a model" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # `--output red.jpg`, red.jpg meant as an input, would overwrite it
        main(["--model", pushed["model_root"], "--output", red, red])
    assert "name a .csv or .parquet file" in capsys.readouterr().err
    rows = str(tmp_path / "rows.csv")
    with pytest.raises(SystemExit):
        main(["--model", pushed["model_root"], "--output", rows, rows])
    assert "is also an input" in capsys.readouterr().err


def test_every_face_is_scored_largest_first(faces, capsys):
    pictures = faces["pictures"]
    assert main(["--model", faces["model"], str(pictures / "group.jpg"), str(pictures / "hopper.jpg"),
                 str(pictures / "wall.png")]) == 0
    out = capsys.readouterr().out
    assert "group.jpg  1200x600: 3 faces" in out and "hopper.jpg  512x600: 1 face" in out
    assert "wall.png  300x200: no face found" in out
    assert "3 images (2 with faces scored, 4 faces)" in out and "no_face 1" in out

    assert main(["--model", faces["model"], "--json", str(pictures / "group.jpg")]) == 0
    (group,) = json.loads(capsys.readouterr().out)["images"]
    assert [f["face"] for f in group["faces"]] == [0, 1, 2]
    areas = [f["box"][2] * f["box"][3] for f in group["faces"]]
    assert areas == sorted(areas, reverse=True)
    for f, (x0, y0, x1, y1) in zip(group["faces"], faces["places"]):
        x, y, w, h = f["box"]
        assert x0 < x + w / 2 < x1 and y0 < y + h / 2 < y1
        assert len(f["landmarks"]) == 6 and 0 < f["score"] <= 1 and set(f["probabilities"]) == {"AU1", "AU2", "AU12"}

    assert main(["--model", faces["model"], "--json", "--which-faces", "largest", str(pictures / "group.jpg")]) == 0
    (largest,) = json.loads(capsys.readouterr().out)["images"]
    assert len(largest["faces"]) == 1 and largest["faces"][0]["box"] == group["faces"][0]["box"]


def test_csv_has_a_row_per_image_and_face_and_a_column_per_au(faces, capsys):
    pictures = faces["pictures"]
    assert main(["--model", faces["model"], "--csv", str(pictures)]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert list(rows[0]) == table.columns("au", [1, 2, 12])
    assert {"AU01_r", "AU01_c", "AU12_r", "AU12_c", "confidence", "x", "width"} <= set(rows[0])
    by_file = {}
    for r in rows:
        by_file.setdefault(os.path.basename(r["file"]), []).append(r)
    assert len(by_file["group.jpg"]) == 3 and len(by_file["hopper.jpg"]) == 1
    (wall,) = by_file["wall.png"]
    assert wall["success"] == "0" and wall["reason"] == "no_face" and wall["AU01_r"] == ""
    for r in by_file["group.jpg"]:
        assert r["success"] == "1" and 0 <= float(r["AU01_r"]) <= 1 and r["AU01_c"] in ("0", "1")
        assert r["AU01_c"] == str(int(float(r["AU01_r"]) >= 0.5)) and r["frame"] == ""
    assert "3 images" in captured.err  # the counts go to stderr when stdout holds the CSV


def test_parquet_and_json_files(faces, tmp_path, capsys):
    import pandas as pd

    pictures = faces["pictures"]
    assert main(["--model", faces["model"], "--output", str(tmp_path / "out" / "faces.parquet"), str(pictures)]) == 0
    frame = pd.read_parquet(tmp_path / "out" / "faces.parquet")
    assert list(frame.columns) == table.columns("au", [1, 2, 12])
    assert len(frame) == 5 and int(frame["success"].sum()) == 4
    assert "wrote " + str(tmp_path / "out" / "faces.parquet") in capsys.readouterr().out
    assert main(["--model", faces["model"], "--output", str(tmp_path / "faces.json"), str(pictures)]) == 0
    saved = json.loads((tmp_path / "faces.json").read_text())
    assert [len(i["faces"]) for i in saved["images"]] == [3, 1, 0] and saved["counts"]["faces"] == 4


def test_folders_and_globs_never_stop_for_a_bad_file_and_count_each_reason(faces, tmp_path, capsys):
    folder = tmp_path / "mixed"
    expected = media.bad_inputs(str(folder))
    (folder / "hopper.jpg").write_bytes(media.photo_bytes())
    assert main(["--model", faces["model"], str(folder), str(tmp_path / "nothing-*.jpg")]) == 1
    out = capsys.readouterr().out
    for name in expected:
        assert f"{folder / name}\n  not scored: {folder / name}" in out, name
    assert "hopper.jpg  512x600: 1 face" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("predict: 7 images (1 with faces scored, 1 faces)")
    for reason in ("corrupt 1", "missing 1", "not_image 1", "too_large 1", "too_small 1", "unreadable 1"):
        assert reason in last
    assert "nothing-*.jpg matches no file" in out

    assert main(["--model", faces["model"], "--json", str(folder / "*.png")]) == 2  # dot.png and huge.png only
    result = json.loads(capsys.readouterr().out)
    assert [os.path.basename(i["image"]) for i in result["images"]] == ["dot.png", "huge.png"]
    assert result["counts"]["reasons"] == {"too_large": 1, "too_small": 1}


def test_tracker_keeps_ids_by_overlap():
    tracker = video.Tracker()
    assert tracker.assign([[0, 0, 10, 10], [50, 50, 10, 10]]) == [0, 1]
    assert tracker.assign([[52, 51, 10, 10], [1, 1, 10, 10]]) == [1, 0]  # the order changed, the ids did not
    assert tracker.assign([]) == []
    assert tracker.assign([[100, 100, 10, 10], [2, 2, 10, 10]]) == [2, 0]  # a new face, and one back after a gap
    assert video.iou([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(50 / 150)
    assert video.sample_step(30.0, 1, 5.0) == 6.0 and video.sample_step(30.0, 4, 0.0) == 4.0


def test_a_video_gives_a_row_per_sampled_frame_and_face_with_ids_kept(faces, tmp_path, monkeypatch):
    import pandas as pd

    places = media.face_video(str(tmp_path / "clip.mp4"), frames=12, fps=10.0)
    media.face_video(str(tmp_path / "empty.mp4"), frames=4, blank=True)
    media.truncated_video(str(tmp_path / "clip.mp4"), str(tmp_path / "cut.mp4"))
    scorer = inference.Scorer(faces["model"], batch_size=1)  # a chunk of 4 batches: 4 frames a call
    assert scorer.chunk == 4
    batches = []
    real = scorer.score_frames
    monkeypatch.setattr(scorer, "score_frames",
                        lambda frames, names: batches.append(len(frames)) or real(frames, names))
    lines = []
    result = logic.run(scorer, logic.expand([str(tmp_path / "clip.mp4"), str(tmp_path / "empty.mp4"),
                                             str(tmp_path / "cut.mp4")]),
                       outputs=logic.Outputs(str(tmp_path / "rows.parquet")), every=2, progress_write=lines.append)
    assert batches == [4, 2, 2]  # frames stream through the scorer a chunk at a time
    clip, empty, cut = result["videos"]
    assert (clip["frames"], clip["sampled"], clip["with_face"], clip["face_ids"]) == (12, 6, 6, 2)
    assert clip["error"] is None and os.path.getsize(clip["plot"]) > 1000
    assert clip["plot"] == str(tmp_path / "rows.clip.png") and set(clip["active_share"]) == {"AU1", "AU2", "AU12"}
    assert empty["reason"] == "no_face" and "no face found in any of the 2 sampled frames" in empty["error"]
    assert cut["reason"] == "not_video" and str(tmp_path / "cut.mp4") in cut["error"] and "re-encode" in cut["error"]
    assert any(line.startswith("progress: predict 12/12 frames of clip.mp4") for line in lines)

    rows = pd.read_parquet(tmp_path / "rows.parquet")
    faced = rows[rows["file"].str.endswith("clip.mp4")]
    assert list(faced["frame"].drop_duplicates()) == [0, 2, 4, 6, 8, 10] and len(faced) == 12
    assert faced["timestamp"].tolist()[:2] == [0.0, 0.0] and faced["timestamp"].max() == pytest.approx(1.0)
    for face_id, track in faced.groupby("face_id"):
        # one id follows one portrait: its box centre stays inside that portrait's pasted place in every frame
        k = None
        for _, r in track.iterrows():
            cx, cy = r["x"] + r["width"] / 2, r["y"] + r["height"] / 2
            inside = [j for j, (x0, y0, x1, y1) in enumerate(places[int(r["frame"])]) if x0 < cx < x1 and y0 < cy < y1]
            assert len(inside) == 1
            k = inside[0] if k is None else k
            assert inside[0] == k, (face_id, r["frame"])
    blank = rows[rows["file"].str.endswith("empty.mp4")]
    assert len(blank) == 2 and (blank["success"] == 0).all() and set(blank["reason"]) == {"no_face"}

    # --fps: 5 frames a second of a 10 fps video is every other frame; without --output, its own CSV and plot
    monkeypatch.chdir(tmp_path)
    again = logic.run(scorer, logic.expand([str(tmp_path / "clip.mp4")]), outputs=logic.Outputs(None), fps=5.0)
    (summary,) = again["videos"]
    assert summary["sampled"] == 6 and summary["rows"] == os.path.join(".", "clip.au.csv")
    assert len(pd.read_csv(tmp_path / "clip.au.csv")) == 12 and os.path.exists(tmp_path / "clip.au.png")


def test_a_scorer_that_fails_mid_video_stops_the_frame_reader(faces, tmp_path, monkeypatch):
    """Frames are read ahead in a thread of their own; when scoring fails, the error reaches the caller and the
    reader stops (no thread left blocked on a full queue, the capture released)."""
    import threading

    media.face_video(str(tmp_path / "clip.mp4"), frames=40, fps=10.0, faces=1)
    scorer = inference.Scorer(faces["model"], batch_size=1)

    def broken(frames, names):
        raise RuntimeError("the model went away")

    monkeypatch.setattr(scorer, "score_frames", broken)
    writer = table.RowWriter(str(tmp_path / "rows.csv"), table.columns(scorer.task, scorer.au_ids))
    with pytest.raises(RuntimeError, match="went away"):
        video.score_video(scorer, str(tmp_path / "clip.mp4"), "clip.mp4", writer)
    writer.close()
    assert not [t for t in threading.enumerate() if t.name == "video-reader"]


def test_the_console_shows_each_video(faces, tmp_path, capsys, monkeypatch):
    media.face_video(str(tmp_path / "clip.mp4"), frames=4, fps=10.0, faces=1)
    monkeypatch.chdir(tmp_path)
    assert main(["--model", faces["model"], str(tmp_path / "clip.mp4")]) == 0
    captured = capsys.readouterr()
    assert "clip.mp4  480x320, 10 fps: 4 frames, 4 sampled, a face in 4, 1 face id(s)" in captured.out
    assert "rows: ./clip.au.csv; plot: ./clip.au.png" in captured.out
    assert "progress: predict 4/4 frames of clip.mp4" in captured.err
