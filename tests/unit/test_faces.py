"""The face step on a real photograph (matplotlib ships Grace Hopper's portrait) and on the inputs the web serves."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from components.common import examples
from components.common import faces as contract
from components.common import imaging
from components.common.facefinder import align, detect, tiles
from components.common.facefinder.crop import FaceImage, prepare
from components.convert import parts
from components.faces import __main__ as cli

CROP = contract.FaceSettings()
WHOLE_IF_NONE = contract.FaceSettings(no_face="whole")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real portrait photograph, 512x600, shipped inside matplotlib's wheel."""
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(io.BytesIO(f.read())).convert("RGB")


def _bytes(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def _landmarks_in_crop(result: FaceImage) -> np.ndarray:
    m = align.crop_matrix(result.face, result.width, CROP.margin, result.angle)
    pts = result.face.landmarks.astype(np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def test_real_photo_face_is_found_aligned_and_cropped(photo):
    result = prepare(_bytes(photo), CROP)
    assert result.status == contract.CROPPED and result.reason is None and result.count == 1
    assert (result.width, result.height) == (CROP.size, CROP.size)
    x0, y0, x1, y1 = result.face.box
    # Her face sits in the middle of the portrait, about 200 px wide (found by eye: x 165-365, y 130-330).
    assert 120 < x0 < 210 and 320 < x1 < 410 and 90 < y0 < 170 and 290 < y1 < 370
    assert result.face.score > 0.7
    right_eye, left_eye = result.face.landmarks[0], result.face.landmarks[1]
    assert right_eye[0] < left_eye[0]  # the person's right eye is on the image's left
    assert abs(result.angle) < 5  # she looks straight into the camera
    crop = np.asarray(Image.open(io.BytesIO(result.jpeg)))
    assert crop.shape == (CROP.size, CROP.size, 3)
    # The crop is the face: the detector finds it again, filling the middle of the crop.
    again = detect.get().detect(crop)
    assert again and again[0].side > 0.45 * CROP.size
    cx = (again[0].box[0] + again[0].box[2]) / 2
    assert abs(cx - CROP.size / 2) < 0.1 * CROP.size


@pytest.mark.parametrize("orientation,stored", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270),
                                                (3, Image.Transpose.ROTATE_180)])
def test_a_photo_stored_sideways_is_turned_upright_as_a_viewer_shows_it(photo, orientation, stored):
    """A phone stores a portrait sideways with an EXIF orientation: convert must see it upright, as predict and the
    server do (else the face is missed in training and found in use), and pass none of it through as stored."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    sideways = _bytes(photo.transpose(stored), exif=exif)
    upright = prepare(_bytes(photo), CROP)
    result = prepare(sideways, CROP)
    assert result.status == contract.CROPPED and (result.source_width, result.source_height) == photo.size
    assert np.allclose(result.face.box, upright.face.box, atol=6), (result.face.box, upright.face.box)
    assert abs(result.angle) < 5

    whole = imaging.to_rgb_jpeg(sideways)
    assert (whole.width, whole.height, whole.source_size) == (*photo.size, photo.size)
    assert whole.turned and whole.outcome == imaging.REENCODED
    shown = np.asarray(Image.open(io.BytesIO(whole.jpeg)), np.float32)
    assert np.abs(shown - np.asarray(photo, np.float32)).mean() < 4  # the upright picture, re-encoded
    assert not imaging.to_rgb_jpeg(_bytes(photo)).turned
    half = imaging.to_rgb_jpeg(sideways, max_side=300)
    assert (half.width, half.height, half.outcome) == (256, 300, imaging.RESIZED)


@pytest.mark.parametrize("tilt", [-25, 18])
def test_a_tilted_face_is_turned_so_the_eyes_are_level(photo, tilt):
    turned = photo.rotate(tilt, expand=True, fillcolor=(90, 90, 90), resample=Image.BICUBIC)
    result = prepare(_bytes(turned), CROP)
    assert result.status == contract.CROPPED
    # PIL turns counter-clockwise, which lowers the eye on the image's left: the crop turns back.
    assert result.angle == pytest.approx(-tilt, abs=7)
    eyes = _landmarks_in_crop(result)[:2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1.5  # level in the crop
    assert abs((eyes[0, 0] + eyes[1, 0]) / 2 - CROP.size / 2) < 0.12 * CROP.size


def test_crop_matrix_maps_the_box_centre_to_the_crop_centre_and_levels_the_eyes():
    face = detect.Face((100.0, 50.0, 200.0, 150.0),
                       np.array([[120, 80], [180, 110], [150, 100], [150, 130], [100, 90], [200, 120]], np.float32),
                       0.9)
    angle = align.eye_angle(face)
    assert angle == pytest.approx(math.degrees(math.atan2(30, 60)))
    m = align.crop_matrix(face, 160, 0.25, angle)
    centre = m[:, :2] @ np.array([150.0, 100.0]) + m[:, 2]
    assert centre == pytest.approx([80.0, 80.0])
    eyes = face.landmarks[:2].astype(np.float64) @ m[:, :2].T + m[:, 2]
    assert eyes[0, 1] == pytest.approx(eyes[1, 1])
    # the box side plus a quarter of it on each side spans the 160 px crop
    assert math.hypot(m[0, 0], m[0, 1]) == pytest.approx(160 / 150)


def test_no_face_is_skipped_or_kept_whole_with_its_reason():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8))
    skipped = prepare(_bytes(noise, "PNG"), CROP)
    assert skipped.jpeg is None and skipped.status is None and skipped.reason == contract.NO_FACE
    assert "no face found" in skipped.describe() and "skipped" in skipped.describe()
    whole = prepare(_bytes(noise, "PNG"), WHOLE_IF_NONE)
    assert whole.status == contract.NO_FACE_WHOLE and whole.reason == contract.NO_FACE
    assert (whole.width, whole.height) == (320, 240)
    assert Image.open(io.BytesIO(whole.jpeg)).format == "JPEG"


def test_a_tiny_image_is_too_small():
    result = prepare(_bytes(Image.new("RGB", (16, 12), (200, 150, 120))), WHOLE_IF_NONE)
    assert result.reason == contract.TOO_SMALL and result.status == contract.NO_FACE_WHOLE


def test_a_huge_image_is_searched_shrunk_and_cropped_from_full_resolution(photo):
    big = Image.new("RGB", (4000, 3000), (40, 60, 50))
    big.paste(photo.resize((1536, 1800)), (2200, 900))
    result = prepare(_bytes(big, quality=80), CROP)
    assert result.status == contract.CROPPED and (result.source_width, result.source_height) == (4000, 3000)
    x0, y0, x1, y1 = result.face.box  # in the huge image's own pixels
    assert 2200 + 3 * 120 < x0 < 2200 + 3 * 210 and 900 + 3 * 90 < y0 < 900 + 3 * 170
    assert x1 - x0 > 450


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P"])
def test_grey_cmyk_transparent_and_palette_images_are_cropped(photo, mode):
    if mode == "RGBA":
        img = photo.convert("RGBA")
        img.putalpha(Image.new("L", img.size, 255))
        data = _bytes(img, "PNG")
    elif mode == "P":
        data = _bytes(photo.quantize(256), "PNG")
    else:
        data = _bytes(photo.convert(mode))
    result = prepare(data, CROP)
    assert result.status == contract.CROPPED
    assert np.asarray(Image.open(io.BytesIO(result.jpeg))).shape == (CROP.size, CROP.size, 3)


def test_several_faces_the_largest_is_used(photo):
    scene = Image.new("RGB", (900, 600), (70, 80, 90))
    scene.paste(photo.resize((256, 300)), (20, 150))
    scene.paste(photo.resize((435, 510)), (440, 45))
    result = prepare(_bytes(scene), CROP)
    assert result.count == 2 and result.status == contract.CROPPED
    assert result.face.box[0] > 440  # the larger face, on the right
    assert "2 faces (the largest used)" in result.describe()


def test_undecodable_bytes_raise(photo):
    with pytest.raises(imaging.UndecodableImage):
        prepare(_bytes(photo)[:2000], CROP)
    with pytest.raises(imaging.UndecodableImage):
        prepare(b"<html>not an image</html>", CROP)


def test_whole_mode_finds_nothing_and_keeps_convert_s_behaviour(photo):
    data = _bytes(photo)
    result = prepare(data, contract.FaceSettings(mode="whole"))
    assert result.status == contract.WHOLE and result.jpeg == data and result.face is None  # passed through


def test_face_features_reach_the_example(photo):
    result = prepare(_bytes(photo), CROP)
    record = examples.encode_example(result.jpeg, result.height, result.width, "k", [1, 2], [0, 1],
                                     face=result.features())
    d = examples.example_to_dict(record)
    assert d["face_status"] == contract.CROPPED and d["face_count"] == 1
    assert d["face_box"] == pytest.approx(list(result.face.box), abs=1e-3)
    assert len(d["face_landmarks"]) == 12 and d["face_score"][0] == pytest.approx(result.face.score, abs=1e-6)
    assert d["face_angle"][0] == pytest.approx(result.angle, abs=1e-4)
    assert d["face_scale"] == contract.SCALE_PICTURE and result.tiles == 0  # a clear face: no tiles searched


@pytest.mark.parametrize("field, value, match", [
    ("mode", "faces", "faces is 'faces'"), ("no_face", "drop", "no_face is 'drop'"),
    ("size", 8, "face_size is 8"), ("margin", 2.0, "face_margin is 2.0"), ("min_score", 1.5, "face_min_score"),
])
def test_bad_settings_say_what_is_expected(field, value, match):
    with pytest.raises(ValueError, match=match):
        contract.FaceSettings(**{field: value})


def test_settings_round_trip_and_old_folders_read_as_whole():
    s = contract.FaceSettings(no_face="whole", size=128)
    assert contract.FaceSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert contract.FaceSettings.from_dict(None).mode == "whole"


def test_convert_part_counts_each_image_by_reason(tmp_path, photo):
    rng = np.random.default_rng(1)
    files = {
        "a": _bytes(photo),
        "b": _bytes(Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)), "PNG"),  # no face
        "c": _bytes(Image.new("RGB", (10, 10))),  # too small
        "d": b"broken",
    }
    items = []
    for key, data in sorted(files.items()):
        path = tmp_path / f"{key}.jpg"
        path.write_bytes(data)
        items.append({"key": key, "path": str(path), "au": np.array([1, 0], np.int16).tobytes(), "va": None})
    task = {"split": "train", "shard": 0, "part": 0, "path": str(tmp_path / "out.tfrecord"), "items": items,
            "au_ids": [1, 2], "max_side": 0, "faces": CROP.to_dict()}
    counters = parts.convert_part(task)["stats"]["counters"]
    assert counters["examples_written"] == 1 and counters["faces_cropped"] == 1
    assert counters["faces_no_face"] == 1 and counters["faces_too_small"] == 1 and counters["faces_skipped"] == 2
    assert counters["skipped_undecodable"] == 1
    with open(task["path"], "rb") as f:
        (record,) = list(examples.read_records(f))
    assert examples.example_to_dict(record)["face_status"] == contract.CROPPED
    assert counters["faces_found_picture"] == 1 and counters["faces_found_tiles"] == 0 and counters["faces_tiled"] == 0
    assert ("1 face crops; 2 skipped without a face; reasons: no face 1, too small 1; faces found: 1 in the whole "
            "picture, 0 in tiles (searched in 0 images)") == contract.format_counters(counters)

    task["faces"] = WHOLE_IF_NONE.to_dict()
    counters = parts.convert_part(task)["stats"]["counters"]
    assert counters["examples_written"] == 3 and counters["faces_no_face_whole"] == 2


def test_cli_prints_the_box_and_writes_the_crop(tmp_path, photo, capsys):
    src = tmp_path / "hopper.png"
    photo.save(src)
    blank = tmp_path / "wall.png"
    Image.new("RGB", (200, 160), (180, 180, 170)).save(blank)
    assert cli.main([str(src), str(blank), "--output", str(tmp_path / "crops")]) == 0
    out = capsys.readouterr().out
    assert "hopper.png: face at x" in out and "wall.png: no face found in 200x160: skipped" in out
    assert Image.open(tmp_path / "crops" / "hopper.face.jpg").size == (CROP.size, CROP.size)
    assert cli.main([str(tmp_path / "missing.jpg")]) == 1
    assert "missing.jpg does not exist" in capsys.readouterr().err
    assert cli.main([str(src), "--face-size", "8"]) == 2


# ------------------------------------------------------------------------ small faces: tiles


def _iou(a, b) -> float:
    return float(tiles.box_iou(np.asarray(a, np.float64), np.asarray([b], np.float64))[0])


@pytest.mark.parametrize("width, height", [(640, 480), (1000, 1000), (1280, 720), (1280, 200), (500, 1280)])
def test_tiles_cover_a_large_picture_and_hold_whole_each_face_it_may_miss(width, height):
    boxes = np.array(tiles.tile_boxes(width, height))
    side = min(tiles.TILE_SIDE, width, height)
    assert len(boxes) >= 2
    assert (boxes[:, 2] - boxes[:, 0] == side).all() and (boxes[:, 3] - boxes[:, 1] == side).all()  # squares
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    covered = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    # A face the whole-picture pass may miss (24 px of its 192 px view: an eighth of the longer side, at most half
    # a tile) lies whole inside some tile, wherever it is.
    face = min(side // 2, max(width, height) // 8)
    xs, ys = np.meshgrid(np.arange(0, width - face + 1, 3), np.arange(0, height - face + 1, 3))
    x, y = xs.reshape(-1, 1), ys.reshape(-1, 1)
    inside = (boxes[:, 0] <= x) & (x + face <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y + face <= boxes[:, 3])
    assert inside.any(axis=1).all()


def test_a_picture_no_larger_than_a_tile_has_no_tiles():
    assert tiles.tile_boxes(tiles.TILE_SIDE, 300) == [] and tiles.tile_boxes(320, 240) == []
    assert len(tiles.tile_boxes(640, 480)) == 4  # the tiles' cost at 640x480: four more looks


def test_nms_keeps_the_most_confident_box_of_each_face():
    boxes = [(100, 100, 150, 150),  # a face seen in one tile
             (103, 98, 152, 149),  # the same face in the next tile, more sure
             (100, 100, 124, 150),  # the same face cut by a tile's edge: its left half, less sure
             (152, 100, 200, 150),  # the face beside it, touching
             (400, 400, 440, 440)]  # a face elsewhere
    scores = [0.8, 0.9, 0.85, 0.7, 0.75]
    assert tiles.nms(boxes, scores) == [1, 4, 3]  # most confident first
    assert tiles.nms([], []) == [] and tiles.nms([(0, 0, 10, 10)], [0.6]) == [0]
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        tiles.nms(boxes[:2], scores[:1])
    assert _iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_merged_faces_keep_the_scale_that_found_them_and_a_clear_face_needs_no_tiles():
    eyes = np.zeros((6, 2), np.float32)
    picture = detect.Face((100.0, 100.0, 140.0, 140.0), eyes, 0.62)
    tile = detect.Face((10.0, 12.0, 52.0, 52.0), eyes, 0.9).moved(88, 88, contract.SCALE_TILES)
    assert tile.box == (98.0, 100.0, 140.0, 140.0) and tile.landmarks[0].tolist() == [88.0, 88.0]
    (kept,) = detect.Detector._merge([picture, tile])
    assert kept.scale == contract.SCALE_TILES and kept.scaled(2.0).scale == contract.SCALE_TILES
    # 40 px of a 1000 px picture is 7.7 px of the detector's 192 px view: not a face it sees clearly
    assert not tiles.sure([picture], 1000, 1000) and tiles.sure([picture], 300, 200)


def test_an_unsure_face_is_looked_at_again_in_the_tile_that_shows_it_best():
    grid = tiles.tile_boxes(1000, 1000)  # 4 x 4 tiles of 384 px, starting every 205 px
    assert len(grid) == 16
    # a face inside the first tile only; one on the border of four tiles: the tile nearest its centre
    assert tiles.tiles_around(grid, [(20, 30, 60, 70)]) == [(0, 0, 384, 384)]
    around = tiles.tiles_around(grid, [(380, 380, 420, 420), (390, 385, 430, 425)])  # two boxes, one tile
    assert around == [(205, 205, 589, 589)]
    assert tiles.tiles_around(grid, []) == [] and tiles.tiles_around([], [(0, 0, 5, 5)]) == []


def _small_face_scene(photo: Image.Image, x: int, y: int) -> tuple[Image.Image, tuple]:
    """Her portrait scaled to 12% of a 1000 px canvas at (x, y), and where BlazeFace boxes her face there."""
    full = detect.get(tiles="never").detect(np.asarray(photo))[0].box  # her face in the portrait itself
    scale = 0.12 * 1000 / photo.size[1]
    canvas = Image.new("RGB", (1000, 1000), (96, 110, 124))
    canvas.paste(photo.resize((round(photo.size[0] * scale), round(photo.size[1] * scale)), Image.LANCZOS), (x, y))
    return canvas, tuple(v * scale + (x, y)[k % 2] for k, v in enumerate(full))


@pytest.mark.parametrize("x, y", [(560, 180), (100, 100), (450, 420)])  # inside one tile; across tile borders
def test_a_small_face_in_a_large_picture_is_found_in_tiles_and_boxed_right(photo, x, y):
    canvas, true_box = _small_face_scene(photo, x, y)
    assert true_box[2] - true_box[0] == pytest.approx(40, abs=3)  # 8 px in BlazeFace's 192 px view of the canvas
    result = prepare(_bytes(canvas, quality=92), CROP)
    assert result.status == contract.CROPPED and result.count == 1
    assert result.face.scale == contract.SCALE_TILES and result.tiles >= 1
    assert _iou(result.face.box, true_box) > 0.7, (result.face.box, true_box)
    assert result.face.score >= tiles.TILE_MIN_SCORE
    eyes = result.face.landmarks[:2]  # in the canvas's pixels, inside her box
    assert ((eyes >= np.array(true_box[:2]) - 2) & (eyes <= np.array(true_box[2:]) + 2)).all()
    assert abs(result.angle) < 8
    assert result.features()[contract.FACE_SCALE] == b"tiles" and "found in tiles" in result.describe()
    # "never" is the face finder before the tiles: a face may show up there, but not as well boxed
    before = detect.get(tiles="never").detect(np.asarray(canvas))
    assert not before or _iou(before[0].box, true_box) < _iou(result.face.box, true_box)
