"""Unit tests of convert: image conversion, work list, splits, shard plan, Beam options and the CLI (no Beam run)."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.common import faces as face_contract
from components.common import beamio, examples, imaging, labels
from components.common.ledger import read_downloaded
from components.common.manifest import read_manifest
from components.convert import logic, parts, sample, transforms
from components.convert import __main__ as cli

W, H = 48, 32  # not square, so a swapped width and height shows


def picture(mode="RGB", size=(W, H)):
    """A smooth colour image (x: red, y: green) in the given Pillow mode."""
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x * 255 // max(size[0] - 1, 1), y * 255 // max(size[1] - 1, 1), np.full_like(x, 96)], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB").convert(mode)


def encode(image, fmt, **params):
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def rgba_with_transparent_corner():
    image = picture("RGBA")
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (0, 0, 10, 10))
    image.putalpha(alpha)
    return image


def animated_gif():
    red = Image.new("RGB", (W, H), (255, 0, 0)).convert("P")
    blue = Image.new("RGB", (W, H), (0, 0, 255)).convert("P")
    return encode(red, "GIF", save_all=True, append_images=[blue], duration=100, loop=0)


def palette_with_transparency():
    image = picture("P")
    return encode(image, "PNG", transparency=0)


def png16():
    a = (np.mgrid[0:H, 0:W][1] * 1300).astype(np.uint16)  # up to 61100 of 65535
    return encode(Image.fromarray(a, "I;16"), "PNG")


FORMATS = {
    "jpeg_rgb": lambda: encode(picture(), "JPEG", quality=90),
    "jpeg_progressive": lambda: encode(picture(), "JPEG", quality=90, progressive=True),
    "jpeg_grayscale": lambda: encode(picture("L"), "JPEG"),
    "jpeg_cmyk": lambda: encode(picture("CMYK"), "JPEG"),
    "png_rgb": lambda: encode(picture(), "PNG"),
    "png_rgba": lambda: encode(rgba_with_transparent_corner(), "PNG"),
    "png_palette": lambda: encode(picture("P"), "PNG"),
    "png_palette_transparent": palette_with_transparency,
    "png_grayscale": lambda: encode(picture("L"), "PNG"),
    "png_grayscale_alpha": lambda: encode(picture("LA"), "PNG"),
    "png_16bit": png16,
    "png_1bit": lambda: encode(picture("1"), "PNG"),
    "gif_animated": animated_gif,
    "webp_rgb": lambda: encode(picture(), "WEBP", quality=90),
    "webp_rgba": lambda: encode(rgba_with_transparent_corner(), "WEBP", lossless=True),
    "bmp": lambda: encode(picture(), "BMP"),
}
PASS_THROUGH = {"jpeg_rgb", "jpeg_progressive"}


def decoded(jpeg: bytes):
    with Image.open(io.BytesIO(jpeg)) as im:
        im.load()
        return im.format, im.mode, im.size, np.asarray(im.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_becomes_an_rgb_jpeg_of_the_same_size(name):
    data = FORMATS[name]()
    out = imaging.to_rgb_jpeg(data)
    fmt, mode, size, _ = decoded(out.jpeg)
    assert (fmt, mode, size) == ("JPEG", "RGB", (W, H))
    assert (out.width, out.height) == (W, H)
    assert out.outcome == (imaging.PASSED_THROUGH if name in PASS_THROUGH else imaging.REENCODED)


def test_rgb_jpeg_passes_through_byte_for_byte():
    data = FORMATS["jpeg_rgb"]()
    assert imaging.to_rgb_jpeg(data).jpeg == data


def test_transparency_is_composited_on_white():
    for data in (FORMATS["png_rgba"](), FORMATS["webp_rgba"]()):
        _, _, _, pixels = decoded(imaging.to_rgb_jpeg(data).jpeg)
        assert pixels[2:8, 2:8].min() >= 240  # the transparent corner
        assert pixels[H - 5, W - 5, 0] < 240  # an opaque pixel keeps its colour (red grows with x, blue is 96)


def test_gif_keeps_its_first_frame():
    _, _, _, pixels = decoded(imaging.to_rgb_jpeg(animated_gif()).jpeg)
    r, g, b = pixels[H // 2, W // 2]
    assert r > 200 and g < 60 and b < 60  # red, not the blue second frame


def test_16bit_grayscale_is_scaled_not_clipped():
    _, _, _, pixels = decoded(imaging.to_rgb_jpeg(png16()).jpeg)
    assert pixels[:, 0].mean() < 20 and 200 < pixels[:, -1].mean() < 255


@pytest.mark.parametrize("name", ["jpeg_rgb", "png_rgb", "webp_rgb"])
def test_max_side_shrinks_the_longest_side_keeping_the_aspect(name):
    out = imaging.to_rgb_jpeg(FORMATS[name](), max_side=24)
    assert out.outcome == imaging.RESIZED
    assert (out.width, out.height) == (24, 16)
    assert decoded(out.jpeg)[2] == (24, 16)


def test_max_side_never_enlarges():
    data = FORMATS["jpeg_rgb"]()
    out = imaging.to_rgb_jpeg(data, max_side=1000)
    assert out.jpeg == data and out.outcome == imaging.PASSED_THROUGH


def test_target_size():
    assert imaging.target_size(1000, 500, 0) == (1000, 500)
    assert imaging.target_size(1000, 500, 256) == (256, 128)
    assert imaging.target_size(300, 1200, 300) == (75, 300)
    assert imaging.target_size(5000, 1, 100) == (100, 1)


@pytest.mark.parametrize("data", [b"", b"not an image at all", FORMATS["jpeg_rgb"]()[:200],
                                  FORMATS["png_rgb"]()[:60], b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_undecodable_bytes_raise_undecodable_image(data):
    with pytest.raises(imaging.UndecodableImage):
        imaging.to_rgb_jpeg(data)


# --- the part writer (what each worker process runs) ---------------------------------------------


def test_convert_part_writes_examples_counts_and_skips(tmp_path):
    images = {"a": FORMATS["jpeg_rgb"](), "b": FORMATS["png_rgba"](), "c": b"broken"}
    items = []
    for key, data in images.items():
        (tmp_path / f"{key}.jpg").write_bytes(data)
    for key in ["a", "b", "c", "missing"]:
        au = np.zeros(60, np.int16)
        au[0], au[1] = 1, 999
        items.append({"key": key, "path": str(tmp_path / f"{key}.jpg"), "au": au.tobytes(),
                      "va": [0.5, -0.25] if key == "a" else None})
    result = parts.convert_part({"split": "train", "shard": 0, "part": 3, "path": str(tmp_path / "out" / "p.tfrecord"),
                                 "items": items, "au_ids": list(labels.ALL_AU_IDS), "max_side": 0})
    counters = result["stats"]["counters"]
    # a task without face settings (as before the face step) converts whole images, detecting nothing
    assert counters == {"examples_written": 2, "passed_through": 1, "reencoded": 1, "resized": 0,
                        "skipped_undecodable": 1, "skipped_missing_file": 1, "faces_whole": 2,
                        **{name: 0 for name in face_contract.COUNTERS if name != "faces_whole"}}
    au = np.array(result["stats"]["splits"]["train"]["au"])
    assert au[0].tolist() == [2, 0, 0] and au[1].tolist() == [0, 0, 2] and au[2].tolist() == [0, 2, 0]
    with open(tmp_path / "out" / "p.tfrecord", "rb") as f:
        records = [examples.decode_example(r) for r in examples.read_records(f)]
    assert [r.features.feature[examples.IMAGE_KEY].bytes_list.value[0] for r in records] == [b"a", b"b"]
    first = records[0].features.feature
    assert first[examples.IMAGE_ENCODED].bytes_list.value[0] == images["a"]
    assert list(first[examples.LABEL_VA].float_list.value) == [0.5, -0.25]
    assert examples.LABEL_VA not in records[1].features.feature


def test_read_image_finds_the_file_under_another_extension(tmp_path):
    (tmp_path / "k.png").write_bytes(b"png bytes")
    assert parts.read_image(str(tmp_path / "k.jpg")) == b"png bytes"
    assert parts.read_image(str(tmp_path / "nothing.jpg")) is None


# --- contract-3 helpers that need no TensorFlow ----------------------------------------------------


def test_tfrecord_framing_round_trips_and_detects_corruption():
    buf = io.BytesIO()
    for record in (b"one", b"", b"three" * 1000):
        examples.write_record(buf, record)
    data = buf.getvalue()
    assert list(examples.read_records(io.BytesIO(data))) == [b"one", b"", b"three" * 1000]
    corrupt = bytearray(data)
    corrupt[20] ^= 0xFF
    with pytest.raises(ValueError, match="corrupt"):
        list(examples.read_records(io.BytesIO(bytes(corrupt)), "x.tfrecord"))
    with pytest.raises(ValueError, match="truncated"):
        list(examples.read_records(io.BytesIO(data[:-3]), "x.tfrecord"))


def test_label_counts_and_summary_table():
    counts = examples.label_counts([[1, 0], [999, 0], [1, 1]], 2)
    assert counts.tolist() == [[2, 0, 1], [1, 2, 0]]
    assert examples.summary_au_table([4, 9], counts) == {
        "4": {"positive": 2, "negative": 0, "unknown": 1}, "9": {"positive": 1, "negative": 2, "unknown": 0}}
    assert examples.label_counts([], 3).tolist() == [[0, 0, 0]] * 3


# --- manifest, ledger, work list, splits, shards -------------------------------------------------


def dataset(tmp_path, n=60, **kwargs):
    return sample.write_dataset(str(tmp_path), [FORMATS["jpeg_rgb"]()] * n, **kwargs)


def test_work_list_joins_manifest_and_ok_ledger_rows(tmp_path):
    manifest_dir, downloads_dir, keys = dataset(tmp_path, n=10, failed=3, va=[[0.1, 0.2]] * 4)
    downloaded = read_downloaded(downloads_dir, logic.ASSUMED_IMAGE_BYTES)
    work, counters = logic.build_work_list(read_manifest(manifest_dir), downloaded, 0.2, 0.2)
    assert counters == {"manifest_rows": 13, "downloaded_ok": 10, "not_downloaded": 3, "ledger_ok_not_in_manifest": 0}
    assert sorted(k.decode() for k in work.keys) == sorted(keys[:10])
    assert (~np.isnan(work.va).any(axis=1)).sum() == 4
    manifest = pd.read_parquet(f"{manifest_dir}/manifest.parquet").set_index("key")
    for key, au in zip(work.keys, work.au):
        assert au.tolist() == manifest.loc[key.decode(), list(labels.AU_COLUMNS)].tolist()


def test_splits_and_shards_are_stable_across_runs_and_row_orders(tmp_path):
    manifest_dir, downloads_dir, _ = dataset(tmp_path, n=300)
    ledger = read_downloaded(downloads_dir, logic.ASSUMED_IMAGE_BYTES)
    keys, au, va = read_manifest(manifest_dir)
    first, _ = logic.build_work_list((keys, au, va), ledger, 0.15, 0.15)
    order = np.random.default_rng(1).permutation(len(keys))
    second, _ = logic.build_work_list((keys[order], au[order], None), ledger, 0.15, 0.15)
    split_of = lambda w: dict(zip(w.keys.tolist(), w.split.tolist()))  # noqa: E731
    assert split_of(first) == split_of(second)
    shares = np.bincount(first.split, minlength=3) / len(first)
    assert 0.55 < shares[0] < 0.85 and 0.05 < shares[1] < 0.25 and 0.05 < shares[2] < 0.25
    plan = logic.make_plan(first, shard_bytes=1000, part_bytes=500)
    a, shard_a, part_a = logic.assign_parts(first, plan)
    b, shard_b, part_b = logic.assign_parts(second, plan)
    assert a.keys.tolist() == b.keys.tolist()
    assert shard_a.tolist() == shard_b.tolist() and part_a.tolist() == part_b.tolist()
    assert all(examples.split_for_key(k.decode(), 0.15, 0.15) == examples.SPLITS[s] for k, s in zip(a.keys, a.split))


def test_plan_sizes_shards_from_bytes_and_spreads_parts():
    n = 1000
    split = np.array([0] * 700 + [1] * 300, np.int8)  # no test split
    work = logic.WorkList(keys=np.array([f"{i:020d}".encode() for i in range(n)]), ext=np.zeros(n, np.int8),
                          split=split, au=np.zeros((n, 60), np.int16), va=np.full((n, 2), np.nan, np.float32),
                          size=np.full(n, 1_000_000, np.int64))  # 1 MB an image
    plan = logic.make_plan(work, shard_bytes=150_000_000, part_bytes=32_000_000, min_parts=16)
    assert set(plan) == {"train", "validation"}  # an empty split has no shards
    assert plan["train"]["shards"] == 5 and plan["validation"]["shards"] == 2  # 700 MB, 300 MB
    assert plan["train"]["parts"] == 5 and plan["validation"]["parts"] == 5  # at most 32 MB a part
    work.size[:] = 1000  # 1 kB an image
    small = logic.make_plan(work, min_parts=16)
    assert small["train"]["shards"] == 1 and small["validation"]["shards"] == 1  # at least one
    assert small["train"]["parts"] + small["validation"]["parts"] >= 16  # every core gets work


def test_manifest_errors_name_the_file_row_and_fix(tmp_path):
    manifest_dir, _, keys = dataset(tmp_path, n=3)
    path = f"{manifest_dir}/manifest.parquet"
    df = pd.read_parquet(path)
    df.loc[1, "AU12"] = 2
    df.to_parquet(path, index=False)
    with pytest.raises(ValueError, match=r"row 3 .*AU12 is 2; expected 0, 1 or 999"):
        read_manifest(manifest_dir)
    df.drop(columns=["AU7", "AU9"]).to_parquet(path, index=False)
    with pytest.raises(ValueError, match=r"lacks the columns AU7, AU9.*rerun ingest"):
        read_manifest(path)  # the file itself is accepted too
    with pytest.raises(FileNotFoundError, match="folder written by ingest"):
        read_manifest(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="written by download"):
        read_downloaded(str(tmp_path / "nowhere"), logic.ASSUMED_IMAGE_BYTES)


# --- Beam options ----------------------------------------------------------------------------------


def test_local_runner_is_named_so_beam_never_reaches_for_prism():
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    options = beamio.pipeline_options("")
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_running_mode == "in_memory"
    assert transforms.local_processes(options) == beamio.local_cores()
    assert transforms.local_processes(beamio.pipeline_options("--convert_processes=3")) == 3
    mp = beamio.pipeline_options("--direct_running_mode=multi_processing --direct_num_workers=2")
    assert mp.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert transforms.local_processes(mp) == 1  # Beam's own workers take the cores


def test_beam_args_pass_through_to_other_runners():
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions

    options = beamio.pipeline_options(
        "--runner=DataflowRunner --project=p --region=europe-west4 --temp_location=gs://b/tmp")
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(GoogleCloudOptions).region == "europe-west4"
    assert transforms.local_processes(options) == 1
    with pytest.raises(ValueError, match="is not a --flag"):
        beamio.pipeline_options("runner=DataflowRunner")
    with pytest.raises(ValueError, match="cannot be split"):
        beamio.pipeline_options('--project="unclosed')


def test_stats_add_up():
    a = {"splits": {"train": {"examples": 2, "au": [[1, 1, 0]]}}, "counters": {"x": 1},
         "shards": [["train", 0, "p", 2]]}
    b = {"splits": {"train": {"examples": 1, "au": [[0, 0, 1]]}, "test": {"examples": 1, "au": [[1, 0, 0]]}},
         "counters": {"x": 2, "y": 1}, "shards": []}
    merged = beamio.MergeStats().merge_accumulators([a, b])
    assert merged["splits"]["train"] == {"examples": 3, "au": [[1, 1, 1]]}
    assert merged["splits"]["test"]["examples"] == 1 and merged["counters"] == {"x": 3, "y": 1}


# --- CLI -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--manifest", "m", "--downloads", "d", "--output", "o", "--test-fraction", "x"], "invalid float value"),
    (["--manifest", "m", "--downloads", "d", "--output", "o", "--beam-args", "--runner=X"], '--beam-args="--runner'),
    (["--manifest", "m", "--output", "o"], "--downloads"),
])
def test_cli_bad_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_bad_values_exit_2_without_traceback(tmp_path, capsys):
    assert cli.main(["--manifest", str(tmp_path), "--downloads", str(tmp_path), "--output", str(tmp_path / "o"),
                     "--validation-fraction", "0.6", "--test-fraction", "0.5"]) == 2
    assert "together below 1" in capsys.readouterr().err
    assert cli.main(["--manifest", str(tmp_path), "--downloads", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "manifest" in err and "Traceback" not in err
    assert cli.main(["--manifest", str(tmp_path), "--downloads", str(tmp_path), "--output", str(tmp_path / "o"),
                     "--max-side", "-1"]) == 2
    assert "max_side is -1" in capsys.readouterr().err
