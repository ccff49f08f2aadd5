"""convert on Beam's local runner: the PTransform on in-memory parts (counters checked), then the whole step."""
import io
import os
import subprocess
import sys
import types

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that
from PIL import Image

from components.common import beamio, examples, labels
from components.common import faces as face_contract
from components.common.faces import FaceSettings
from components.convert import logic, sample, transforms
from components.convert.component import convert

# These tests are about the Beam machinery on small drawn images, not faces: whole images.
WHOLE = FaceSettings(mode="whole")

pytestmark = pytest.mark.slow


def encode(image, fmt, **params):
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def formats(size=(40, 24)):
    rgb = sample.face_like(64, 1).resize(size)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    return {
        "jpeg": encode(rgb, "JPEG", quality=90),
        "cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "gray": encode(rgb.convert("L"), "JPEG"),
        "png": encode(rgb, "PNG"),
        "rgba": encode(rgba, "PNG"),
        "palette": encode(rgb.convert("P"), "PNG"),
        "gif": encode(rgb.convert("P"), "GIF"),
        "webp": encode(rgb, "WEBP"),
        "bmp": encode(rgb, "BMP"),
    }


def all_records(folder, *splits):
    """{key: serialized example} of every shard of the splits (all by default), in file order."""
    records = {}
    for split in splits or examples.SPLITS:
        for path in examples.shard_files(str(folder), split):
            with open(path, "rb") as f:
                for r in examples.read_records(f):
                    records[examples.decode_example(r).features.feature[examples.IMAGE_KEY].bytes_list.value[0]] = r
    return records


def labels_for(i):
    au = np.zeros(60, np.int16)
    au[0] = i % 2  # AU1 alternates 0/1
    au[1] = 999  # AU2 unknown everywhere
    return au


def test_images_to_tfrecords_on_the_local_runner(tmp_path):
    images = formats()
    items = []
    for i, (name, data) in enumerate(sorted(images.items())):
        (tmp_path / f"{name}.img").write_bytes(data)
        items.append({"key": name, "path": str(tmp_path / f"{name}.img"), "au": labels_for(i).tobytes(),
                      "va": [0.25, 0.5]})
    (tmp_path / "broken.img").write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    items.append({"key": "broken", "path": str(tmp_path / "broken.img"), "au": labels_for(0).tobytes(), "va": None})
    items.append({"key": "gone", "path": str(tmp_path / "gone.img"), "au": labels_for(0).tobytes(), "va": None})
    # train: one shard made of two parts (concatenated), validation: one part
    parts = [
        {"split": "train", "shard": 0, "part": 0, "items": items[:4]},
        {"split": "train", "shard": 0, "part": 1, "items": items[4:8]},
        {"split": "validation", "shard": 0, "part": 0, "items": items[8:]},
    ]
    plan = {"train": {"shards": 1}, "validation": {"shards": 1}}
    out = tmp_path / "examples"
    au_ids = list(labels.ALL_AU_IDS)
    expected_au = examples.label_counts([labels_for(i) for i in range(len(images))], 60)

    def check(stats_list):
        (stats,) = stats_list
        assert stats["splits"]["train"]["examples"] == 8
        assert stats["splits"]["validation"]["examples"] == 1
        total = np.asarray(stats["splits"]["train"]["au"]) + np.asarray(stats["splits"]["validation"]["au"])
        assert total.tolist() == expected_au.tolist()
        assert sorted(s[:2] for s in stats["shards"]) == [["train", 0], ["validation", 0]]

    pipeline = beam.Pipeline(options=beamio.pipeline_options("--convert_processes=2"))
    stats = (pipeline | beam.Create(parts) | transforms.ImagesToTFRecords(
        str(out), str(tmp_path / "staging"), plan, au_ids, processes=2))
    assert_that(stats, check)
    result = pipeline.run()
    result.wait_until_finish()

    counters = {m.key.metric.name: m.committed
                for m in result.metrics().query(MetricsFilter().with_namespace("convert"))["counters"]}
    assert counters == {"examples_written": 9, "passed_through": 1, "reencoded": 8, "resized": 0,
                        "skipped_undecodable": 1, "skipped_missing_file": 1, "faces_whole": 9,
                        **{name: 0 for name in face_contract.COUNTERS if name != "faces_whole"}}
    assert sorted(os.listdir(out)) == ["train-00000-of-00001.tfrecord", "validation-00000-of-00001.tfrecord"]
    assert not os.listdir(tmp_path / "staging")  # the parts are gone

    records = all_records(out)
    assert sorted(records) == sorted(k.encode() for k in images)
    for key, record in records.items():
        f = examples.decode_example(record).features.feature
        with Image.open(io.BytesIO(f[examples.IMAGE_ENCODED].bytes_list.value[0])) as im:
            im.load()
            assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (40, 24)), key  # decoded back
        assert list(f[examples.LABEL_VA].float_list.value) == [0.25, 0.5]
    jpeg = examples.decode_example(records[b"jpeg"]).features.feature[examples.IMAGE_ENCODED].bytes_list.value[0]
    assert jpeg == images["jpeg"]  # passed through byte for byte
    # a shard is its parts in order, each part in key order
    order = [k.decode() for k in all_records(out, "train")]
    assert order == sorted(i["key"] for i in items[:4]) + sorted(i["key"] for i in items[4:8])


def expected_counts(manifest_dir, keys_written, validation_fraction, test_fraction):
    """Per split: examples and per-AU counts, computed straight from the manifest."""
    manifest = pd.read_parquet(os.path.join(manifest_dir, "manifest.parquet")).set_index("key")
    out = {}
    for split in examples.SPLITS:
        keys = [k for k in keys_written if examples.split_for_key(k, validation_fraction, test_fraction) == split]
        au = manifest.loc[keys, list(labels.AU_COLUMNS)].to_numpy().reshape(-1, 60)
        out[split] = (len(keys), examples.summary_au_table(labels.ALL_AU_IDS, examples.label_counts(au, 60)))
    return out


def test_convert_step_writes_contract_3_and_is_stable_across_runs(tmp_path, capsys):
    images = sample.demo_images(90, size=48, seed=3, png_share=0.4)
    images[5] = images[5][:100]  # truncated: undecodable
    manifest_dir, downloads_dir, keys = sample.write_dataset(
        str(tmp_path / "data"), images, failed=2, va=[[0.5, -0.5]] * 30, seed=3)
    out = tmp_path / "examples"
    out.mkdir()
    (out / "train-00000-of-00009.tfrecord").write_bytes(b"left by an earlier run")
    size = sum(len(i) for i in images)

    summary = logic.run(manifest_dir, downloads_dir, str(out), 0.2, 0.2, shard_bytes=size // 3, faces=WHOLE)

    written = [k for i, k in enumerate(keys[:90]) if i != 5]
    expected = expected_counts(manifest_dir, written, 0.2, 0.2)
    assert summary["au_ids"] == list(range(1, 61)) and summary["policy"] is None and summary["has_va"] is True
    for split in examples.SPLITS:
        assert (summary["splits"][split]["examples"], summary["splits"][split]["au"]) == expected[split], split
        files = examples.shard_files(str(out), split)
        assert len(files) == summary["splits"][split]["shards"]
        assert all(f.endswith(f"-of-{len(files):05d}.tfrecord") for f in files)
    assert summary["splits"]["train"]["shards"] >= 2  # sized from the bytes
    c = summary["counters"]
    assert (c["manifest_rows"], c["not_downloaded"], c["skipped_undecodable"], c["examples_written"]) == (92, 2, 1, 89)
    assert c["passed_through"] + c["reencoded"] == 89
    assert examples.read_summary(str(out)) == summary
    assert not (out / "train-00000-of-00009.tfrecord").exists()  # the earlier run's shard is gone
    assert not (out / logic.STAGING_DIR).exists()
    first = all_records(out)
    assert sorted(k.decode() for k in first) == sorted(written)

    # The KFP wrapper, on the same data with one process: the same examples, byte for byte.
    capsys.readouterr()
    again = tmp_path / "again"
    art = lambda p: types.SimpleNamespace(path=str(p), uri=str(p), metadata={})  # noqa: E731
    convert.python_func(manifest=art(manifest_dir), downloads=art(downloads_dir), examples=art(again),
                        validation_fraction=0.2, test_fraction=0.2, max_side=0, beam_args="--convert_processes=1",
                        faces="whole", no_face="skip", face_size=160, face_margin=0.25, face_min_score=0.5)
    assert examples.read_summary(str(again))["splits"]["test"]["examples"] == summary["splits"]["test"]["examples"]
    # (the default shard size gives one shard a split here, so compare examples, not files)
    assert all_records(again) == first
    # and it prints progress lines of the images converted, part by part, for the local console's bar
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("progress:")]
    assert lines[0] == "progress: convert 0/90 images" and lines[-1] == "progress: convert 90/90 images"


def test_an_empty_split_has_no_shards_and_max_side_resizes(tmp_path):
    images = [encode(sample.face_like(80, i), "PNG") for i in range(12)]
    manifest_dir, downloads_dir, _ = sample.write_dataset(str(tmp_path / "data"), images)
    out = tmp_path / "examples"
    summary = logic.run(manifest_dir, downloads_dir, str(out), 0.3, 0.0, max_side=32, faces=WHOLE,
                        beam_args="--convert_processes=1")
    assert summary["splits"]["test"] == {"examples": 0, "shards": 0, "au": summary["splits"]["test"]["au"]}
    assert all(v == {"positive": 0, "negative": 0, "unknown": 0} for v in summary["splits"]["test"]["au"].values())
    assert examples.shard_files(str(out), "test") == []
    assert summary["splits"]["train"]["examples"] + summary["splits"]["validation"]["examples"] == 12
    assert summary["counters"]["resized"] == 12 and summary["has_va"] is False
    for record in all_records(out).values():
        f = examples.decode_example(record).features.feature
        with Image.open(io.BytesIO(f[examples.IMAGE_ENCODED].bytes_list.value[0])) as im:
            assert im.size == (32, 32) and im.mode == "RGB"


def _convert_cli(manifest_dir: str, downloads_dir: str, out, *flags: str) -> subprocess.CompletedProcess:
    """`python -m components.convert` on the dataset with these flags, in a fresh process (this one may have run the
    face detector, after which forked children would hang); it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "components.convert", "--manifest", manifest_dir, "--downloads", downloads_dir,
         "--output", str(out), *flags],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_the_cli_converts_in_a_fresh_process_on_every_core(tmp_path):
    """A fresh process has no TensorFlow loaded, so the local run forks one converter per core."""
    images = sample.demo_images(40, size=48, seed=5, png_share=0.5)
    manifest_dir, downloads_dir, keys = sample.write_dataset(str(tmp_path / "data"), images, seed=5)
    out = tmp_path / "examples"
    done = _convert_cli(manifest_dir, downloads_dir, out, "--beam-args=--convert_processes=2", "--faces", "whole")
    assert "forked" not in done.stderr  # no fallback to a single process
    assert "examples_written=40" in done.stdout
    assert sorted(k.decode() for k in all_records(out)) == sorted(keys)


def test_tensorflow_reads_the_examples_as_train_does(tmp_path):
    images = [encode(sample.face_like(40, i).resize((40, 24)), "PNG") for i in range(6)]
    manifest_dir, downloads_dir, keys = sample.write_dataset(str(tmp_path / "data"), images,
                                                             va=[[0.5, -0.5]] * 3, seed=7)
    out = tmp_path / "examples"
    summary = logic.run(manifest_dir, downloads_dir, str(out), 0.0, 0.0, beam_args="--convert_processes=1", faces=WHOLE)
    import tensorflow as tf

    files = examples.shard_files(str(out), "train")
    dataset = tf.data.TFRecordDataset(files).map(
        lambda r: tf.io.parse_single_example(r, examples.feature_spec(60, with_va=summary["has_va"])))
    seen = []
    for parsed in dataset:
        pixels = tf.io.decode_jpeg(parsed[examples.IMAGE_ENCODED]).numpy()
        assert pixels.shape == (24, 40, 3)
        assert parsed[examples.LABEL_AU_IDS].numpy().tolist() == list(range(1, 61))
        seen.append(parsed[examples.IMAGE_KEY].numpy().decode())
    assert sorted(seen) == sorted(keys)
    # the shared reader of contract 3 (components.common.examples) sees the same
    as_dicts = [examples.example_to_dict(r) for r in examples.iter_examples(files)]
    assert sum("va" in d for d in as_dicts) == 3 and all(d["format"] == "jpeg" for d in as_dicts)


def _photo_scenes(n: int) -> list[bytes]:
    """n scenes holding a real portrait photograph (matplotlib's Grace Hopper) at varied sizes, tilts and places."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(io.BytesIO(f.read())).convert("RGB")
    rng = np.random.default_rng(4)
    out = []
    for i in range(n):
        w, h = int(rng.integers(320, 641)), int(rng.integers(320, 641))
        scene = Image.fromarray(rng.integers(60, 200, (h, w, 3), dtype=np.uint8))
        side = int(min(w, h) * rng.uniform(0.5, 0.9))
        face = photo.resize((side, int(side * 600 / 512))).rotate(float(rng.uniform(-20, 20)))
        scene.paste(face.crop((0, 0, side, min(face.size[1], h))), (int(rng.integers(0, w - side + 1)), 0))
        out.append(encode(scene, "JPEG" if i % 2 else "PNG"))
    return out


def test_convert_crops_faces_in_forked_workers_and_counts_the_rest(tmp_path):
    images = _photo_scenes(10) + [encode(sample.face_like(80, i), "PNG") for i in range(3)]  # 3 without a face
    images.append(encode(Image.new("RGB", (12, 12)), "PNG"))  # too small
    manifest_dir, downloads_dir, keys = sample.write_dataset(str(tmp_path / "data"), images, seed=2)
    out = tmp_path / "examples"
    done = _convert_cli(manifest_dir, downloads_dir, out, "--validation-fraction", "0.2", "--test-fraction", "0.2",
                        "--beam-args=--convert_processes=2")
    assert "forked" not in done.stderr  # no fallback to a single process
    assert "faces: 10 face crops; 4 skipped without a face; reasons: no face 3, too small 1" in done.stdout
    summary = examples.read_summary(str(out))
    c = summary["counters"]
    assert c["faces_cropped"] == 10 and c["faces_no_face"] == 3 and c["faces_too_small"] == 1
    assert c["faces_skipped"] == 4 and c["examples_written"] == 10
    assert summary["parameters"]["faces"] == FaceSettings().to_dict()
    records = all_records(out)
    assert sorted(k.decode() for k in records) == sorted(keys[:10])
    for record in records.values():
        d = examples.example_to_dict(record)
        assert d["face_status"] == "cropped" and (d["width"], d["height"]) == (FaceSettings().size,) * 2
        assert len(d["face_box"]) == 4 and len(d["face_landmarks"]) == 12 and d["face_score"][0] >= 0.5

    # --no-face whole keeps them, counted by reason; the KFP wrapper puts the counts on the artifact
    art = lambda p: types.SimpleNamespace(path=str(p), uri=str(p), metadata={})  # noqa: E731
    kept = art(tmp_path / "kept")
    convert.python_func(manifest=art(manifest_dir), downloads=art(downloads_dir), examples=kept,
                        validation_fraction=0.2, test_fraction=0.2, max_side=0, beam_args="--convert_processes=1",
                        faces="crop", no_face="whole", face_size=128, face_margin=0.2, face_min_score=0.5)
    assert kept.metadata["faces_cropped"] == 10 and kept.metadata["faces_no_face_whole"] == 4
    assert kept.metadata["faces_no_face"] == 3 and kept.metadata["faces"] == "crop"
    assert examples.read_summary(kept.path)["counters"]["examples_written"] == 14


def test_convert_counts_the_faces_each_scale_found(tmp_path):
    """A clear face is found in the whole picture; a small one in a large picture, in tiles: both counted, by scale,
    in examples_summary.json and on the console, and each example says which scale found its face."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(io.BytesIO(f.read())).convert("RGB")
    canvas = Image.new("RGB", (1000, 1000), (96, 110, 124))  # her portrait at 12% of it: a 40 px face
    canvas.paste(photo.resize((102, 120), Image.LANCZOS), (560, 180))
    manifest_dir, downloads_dir, keys = sample.write_dataset(
        str(tmp_path / "data"), [_photo_scenes(1)[0], encode(canvas, "JPEG", quality=92)], seed=5)
    out = tmp_path / "examples"
    done = _convert_cli(manifest_dir, downloads_dir, out, "--validation-fraction", "0", "--test-fraction", "0",
                        "--beam-args=--convert_processes=1")
    assert "faces: 2 face crops; faces found: 1 in the whole picture, 1 in tiles (searched in 1 images)" in done.stdout
    c = examples.read_summary(str(out))["counters"]
    assert c["faces_cropped"] == 2 and c["faces_tiled"] == 1
    assert c["faces_found_picture"] == 1 and c["faces_found_tiles"] == 1
    scales = {k.decode(): examples.example_to_dict(r)["face_scale"] for k, r in all_records(out).items()}
    assert scales == {keys[0]: face_contract.SCALE_PICTURE, keys[1]: face_contract.SCALE_TILES}


def test_convert_does_not_fork_once_the_detector_ran_in_its_process(tmp_path, caplog, monkeypatch):
    """MediaPipe hangs in a child forked after it ran: convert then converts in its own process."""
    from components.common.facefinder import detect

    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # the other reason not to fork, out of the way
    detect.get().detect(np.zeros((64, 64, 3), np.uint8))
    manifest_dir, downloads_dir, _ = sample.write_dataset(str(tmp_path / "data"), _photo_scenes(3), seed=1)
    summary = logic.run(manifest_dir, downloads_dir, str(tmp_path / "out"), 0.0, 0.0,
                        beam_args="--convert_processes=2")
    assert summary["counters"]["faces_cropped"] == 3
    assert "face detector already ran in this process" in caplog.text


def test_convert_refuses_to_write_no_example_and_says_why(tmp_path):
    images = [encode(sample.face_like(80, i), "PNG") for i in range(4)]  # drawings BlazeFace finds no face in
    manifest_dir, downloads_dir, _ = sample.write_dataset(str(tmp_path / "data"), images, seed=3)
    with pytest.raises(ValueError, match=r"no example written: all 4 decodable images were skipped without a usable "
                                         r"face \(no face 4\); check the images, lower --face-min-score \(0.5\), or "
                                         r"keep them with --no-face whole or --faces whole"):
        logic.run(manifest_dir, downloads_dir, str(tmp_path / "out"), beam_args="--convert_processes=1")
    assert not (tmp_path / "out" / logic.STAGING_DIR).exists()
    # a download that fetched nothing
    none_dir, none_downloads, _ = sample.write_dataset(str(tmp_path / "none"), [], failed=4, seed=3)
    with pytest.raises(ValueError, match=r"none of the manifest's 4 images was downloaded ok"):
        logic.run(none_dir, none_downloads, str(tmp_path / "out2"), faces=WHOLE)
