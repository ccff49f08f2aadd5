"""Tests of predict: a pushed model (via LATEST, a version, or a model folder) on image files."""
from __future__ import annotations

import json
import os

import pytest

from components.predict import logic
from components.predict.__main__ import main
from components.push import logic as push_logic

import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    model = tiny.make_model(str(root / "model"), tiny.GOOD)
    # Tuned thresholds stored with the model: AU1 0.4, AU2 0.6, AU12 0.5.
    evaluation = tiny.make_evaluation(str(root / "evaluation"), True)
    record = push_logic.run(model, evaluation, None, destination=str(root / "registry"), model_name="au")
    images = root / "images"
    images.mkdir()
    (images / "red.jpg").write_bytes(tiny.jpeg((255, 0, 0)))
    (images / "blue.png").write_bytes(tiny.jpeg((0, 0, 255), fmt="PNG"))
    (images / "notes.txt").write_text("not an image")
    return {"root": root, "model": model, "model_root": str(root / "registry" / "au"), "record": record,
            "images": images}


def test_predict_follows_latest_and_uses_the_tuned_thresholds(pushed, capsys):
    red, blue = str(pushed["images"] / "red.jpg"), str(pushed["images"] / "blue.png")
    assert main(["--model", pushed["model_root"], red, blue]) == 0
    out = capsys.readouterr().out
    assert f"version {pushed['record']['version']}" in out
    assert "inner brow raiser" in out and "lip corner puller" in out
    assert "active: AU1\n" in out and "active: AU12" in out

    assert main(["--model", pushed["model_root"], "--json", red, blue]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["version"] == pushed["record"]["version"] and result["au_ids"] == tiny.AU_IDS
    first = result["images"][0]
    assert first["image"] == red and first["active"] == [1]
    au1 = first["aus"][0]
    assert au1["au"] == 1 and au1["name"] == "inner brow raiser" and au1["probability"] > 0.99
    assert [d["threshold"] for d in first["aus"]] == [0.4, 0.6, 0.5]
    assert result["images"][1]["active"] == [12]  # a PNG is re-encoded to the JPEG the signature decodes


def test_predict_on_a_version_folder_and_a_plain_model_folder(pushed):
    red = [str(pushed["images"] / "red.jpg")]
    by_version = logic.predict(pushed["record"]["uri"], red)
    assert by_version["version"] == pushed["record"]["version"]
    plain = logic.predict(pushed["model"], red, threshold=0.999)
    assert plain["version"] is None and plain["thresholds"].startswith("0.999")
    assert plain["images"][0]["aus"][0]["probability"] == pytest.approx(by_version["images"][0]["aus"][0]["probability"])


def test_errors_are_one_message_and_exit_2(pushed, tmp_path, capsys):
    red = str(pushed["images"] / "red.jpg")
    assert main(["--model", pushed["model_root"], str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg does not exist" in capsys.readouterr().err
    assert main(["--model", pushed["model_root"], str(pushed["images"] / "notes.txt")]) == 2
    assert "notes.txt is not an image" in capsys.readouterr().err
    # A registry whose only push never finished: no LATEST.
    os.makedirs(tmp_path / "registry" / "au" / "20260101T000000Z-half" / "saved_model")
    assert main(["--model", str(tmp_path / "registry" / "au"), red]) == 2
    assert "has no LATEST" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nothing"), red]) == 2
    assert "is not a model" in capsys.readouterr().err


def test_a_model_trained_on_face_crops_gets_the_face_crop_and_says_which_box(tmp_path, capsys):
    """model_config.json's faces settings are applied to a new image: the box used is printed."""
    import io

    from matplotlib import cbook
    from PIL import Image

    from components.common.faces import FaceSettings

    model = tiny.make_model(str(tmp_path / "model"), tiny.GOOD, faces=FaceSettings().to_dict())
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(io.BytesIO(f.read())).convert("RGB")
    scene = Image.new("RGB", (1000, 700), (0, 0, 255))  # blue all round: whole, it would read as AU12
    scene.paste(photo.resize((256, 300)), (600, 300))
    scene.save(tmp_path / "scene.jpg")
    Image.new("RGB", (300, 200), (0, 0, 255)).save(tmp_path / "wall.png")

    result = logic.predict(model, [str(tmp_path / "scene.jpg"), str(tmp_path / "wall.png")])
    assert result["faces"]["mode"] == "crop"
    scene_result, wall = result["images"]
    x0, y0, x1, y1 = scene_result["face"]["box"]
    assert 600 < x0 < 720 and 300 < y0 < 400 and scene_result["face"]["status"] == "cropped"
    assert 12 not in scene_result["active"]  # it scored the face, not the blue around it
    assert wall["scored"] is False and wall["face"]["reason"] == "no_face" and "aus" not in wall

    assert main(["--model", model, str(tmp_path / "scene.jpg"), str(tmp_path / "wall.png")]) == 0
    out = capsys.readouterr().out
    assert "face at x " in out and "of 1000x700 (score" in out
    assert "no face found in 300x200: skipped" in out and "not scored" in out

    # a model trained with --no-face whole scores the whole image and says so
    whole = tiny.make_model(str(tmp_path / "whole"), tiny.GOOD, faces=FaceSettings(no_face="whole").to_dict())
    (wall,) = logic.predict(whole, [str(tmp_path / "wall.png")])["images"]
    assert wall["face"]["status"] == "no_face_whole" and wall["active"] == [12]
