"""Every step's CLI runs in the image the compiled spec gives it, as README's "One step in Docker" shows: the demo set
is served on the host's loopback, only one work folder is mounted (at the same path), every step but download runs
with `--network none`, as a plain user (`-u UID:GID`, `HOME=/tmp`). After each step its outputs are checked against
the data contracts of docs/architecture.md, and at the end every file the containers wrote is the user's and readable by them."""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from conftest import docker_run  # tests/containers/conftest.py: `docker run` as README shows it

from components.common import faces
from pipeline import demo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_SIZE = 100  # wild scenes: enough for every split and a 1-epoch model, small enough for 2 cores
AUS = [1, 2, 4, 5, 6, 9, 12, 17, 20, 25, 26]  # filter's default set
MODEL_NAME = "au-detector"
SHARD = re.compile(r"^(train|validation|test)-(\d{5})-of-(\d{5})\.tfrecord$")
# The step's CLI (python -m components.<step>) -> its task's name in the spec.
TASKS = {"ingest": "ingest", "download": "download", "validate": "validate", "convert": "convert",
         "filter": "filter-examples", "train": "train", "evaluate": "evaluate", "push": "push"}


def images_from_spec(path: str, image_cpu: str, image_gpu: str) -> dict[str, str]:
    """Task name -> the image its executor runs in, from the spec compile.py writes for these tags."""
    done = subprocess.run([sys.executable, "compile.py", "--output", path, "--image-cpu", image_cpu,
                           "--image-gpu", image_gpu], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"compile.py failed:\n{done.stderr[-3000:]}"
    with open(path) as f:
        spec = yaml.safe_load(f)
    executors = spec["deploymentSpec"]["executors"]
    out = {}
    for task, t in spec["root"]["dag"]["tasks"].items():
        label = spec["components"][t["componentRef"]["name"]]["executorLabel"]
        out[task] = executors[label]["container"]["image"]
    return out


def shards(folder: str) -> dict[str, list[str]]:
    """split -> its shard files; every .tfrecord must be named <split>-<i:05d>-of-<n:05d>.tfrecord, i < n, none missing."""
    found: dict[str, list[tuple[int, int, str]]] = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".tfrecord"):
            continue
        m = SHARD.match(name)
        assert m, f"{name} in {folder} is not named <split>-<i:05d>-of-<n:05d>.tfrecord"
        found.setdefault(m.group(1), []).append((int(m.group(2)), int(m.group(3)), name))
    out = {}
    for split, items in found.items():
        count = items[0][1]
        assert sorted(i for i, _, _ in items) == list(range(count)) and {n for _, n, _ in items} == {count}, items
        out[split] = [os.path.join(folder, name) for _, _, name in items]
    return out


def first_example(path: str):
    import tensorflow as tf

    raw = next(iter(tf.data.TFRecordDataset(path).take(1))).numpy()
    return tf.train.Example.FromString(raw)


def int64s(example, key: str) -> list[int]:
    return list(example.features.feature[key].int64_list.value)


def written_files(root: str, seeded: set[str]) -> list[str]:
    """Every path under root (folders included) that the host did not put there itself."""
    out = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            if path not in seeded:
                out.append(path)
    return out


@pytest.mark.slow
def test_every_step_runs_in_its_image_on_the_demo_set(images, user, tmp_path):
    timings: dict[str, float] = {}

    # 1. Which image each step runs in: the one the compiled spec gives its task.
    by_task = images_from_spec(str(tmp_path / "pipeline.yaml"), images["cpu"], images["gpu"])
    assert set(TASKS.values()) <= set(by_task), by_task
    spec_images = {step: by_task[task] for step, task in TASKS.items()}
    assert set(spec_images.values()) == {images["cpu"], images["gpu"]}, spec_images
    assert spec_images["train"] == images["gpu"] and spec_images["ingest"] == images["cpu"], spec_images
    # predict is not a task of the DAG (a user runs it on a pushed model): it runs in the CPU image.
    spec_images["predict"] = images["cpu"]

    # 2. The demo set on the host (not mounted), served on loopback; the work folder is the only mount.
    demo_dir = str(tmp_path / "demo")
    demo.generate_demo(demo_dir, DEMO_SIZE, 0, scene="wild", workers=1)
    work = str(tmp_path / "work")
    os.makedirs(work)
    labels = demo.load_labels(demo_dir)
    plain = labels[(labels["faces_in_scene"] == 1) & (labels["occluder"] == "") & (labels["format"] == "jpeg")]
    truth = plain.iloc[0]  # one demo face for predict, copied into the mounted folder
    face_jpg = os.path.join(work, "face.jpg")
    shutil.copyfile(os.path.join(demo_dir, "images", truth["name"]), face_jpg)

    def run(step: str, args: list[str], network: str = "none", timeout: float = 600) -> subprocess.CompletedProcess:
        image = spec_images[step]
        start = time.monotonic()
        done = docker_run(image, ["python", "-m", f"components.{step}", *args], [work], user, network=network,
                          timeout=timeout)
        timings[step] = round(time.monotonic() - start, 1)
        assert done.returncode == 0, (
            f"{step} failed in {image} (--network {network}, -u {user[0]}:{user[1]}), exit {done.returncode}; "
            f"stderr:\n{done.stderr[-4000:]}\nstdout:\n{done.stdout[-1500:]}")
        return done

    def out(name: str) -> str:
        return os.path.join(work, name)

    with demo.DemoServer(demo_dir, faults=True, seed=0, stall_seconds=5.0) as server:
        sheet = demo.write_sheet(demo_dir, server, out("sheet.xlsx"), seed=0)
        seeded = {os.path.join(folder, n) for folder, dirs, files in os.walk(work) for n in dirs + files}
        if os.getuid() == 0:  # the containers run as a plain user: the folder they write into is theirs
            for path in [work, *seeded]:
                os.chown(path, *user)

        # ingest: the manifest
        run("ingest", ["--source", sheet, "--output", out("manifest")])
        manifest = pd.read_parquet(out("manifest/manifest.parquet"))
        au_columns = [f"AU{i}" for i in range(1, 61)]
        assert {"key", "url", "row", *au_columns} <= set(manifest.columns), manifest.columns
        assert len(manifest) > 0.8 * DEMO_SIZE and manifest["key"].is_unique
        assert manifest["key"].str.fullmatch(r"[0-9a-f]{20}").all()
        assert manifest[au_columns].isin([0, 1, 999]).all().all()
        for name in ("rejects.csv", "ingest_summary.json"):
            assert os.path.isfile(out(f"manifest/{name}")), name

        # download: the only step with a network, the host's, to reach the loopback server
        run("download", ["--manifest", out("manifest"), "--output", out("downloads"), "--allow-private",
                         "--timeout", "1", "--max-attempts", "2", "--backoff", "0.1", "--backoff-max", "0.5",
                         "--retry-after-max", "1", "--no-progress"], network="host")
    ledger = pd.read_parquet(out("downloads/ledger.parquet"))
    assert set(ledger["key"]) == set(manifest["key"])
    assert set(ledger["status"]) == {"ok", "failed"}, ledger["status"].value_counts()  # the demo's faults fail some
    ok = ledger[ledger["status"] == "ok"]
    assert len(ok) > 0.6 * len(ledger)
    for row in ok.itertuples():
        assert os.path.isfile(out(f"downloads/images/{row.key}.{row.format}")), row
    summary = json.loads(open(out("downloads/download_summary.json")).read())
    assert summary["counts"]["ok"] == len(ok) and summary["total"] == len(ledger), summary

    # validate
    run("validate", ["--manifest", out("manifest"), "--downloads", out("downloads"), "--output", out("validation")])
    for name in ("statistics.pb", "schema.pbtxt", "anomalies.pbtxt", "anomalies.json", "validation_summary.json"):
        assert os.path.isfile(out(f"validation/{name}")), name

    # convert: faces found and cropped, TFRecord shards of the three splits
    run("convert", ["--manifest", out("manifest"), "--downloads", out("downloads"), "--output", out("examples")])
    converted = shards(out("examples"))
    assert set(converted) == {"train", "validation", "test"}, converted
    assert os.path.isfile(out("examples/examples_summary.json"))
    example = first_example(converted["train"][0])
    features = example.features.feature
    assert features["image/format"].bytes_list.value == [b"jpeg"]
    assert features["image/encoded"].bytes_list.value[0][:2] == b"\xff\xd8"  # a JPEG
    assert len(features["image/key"].bytes_list.value[0]) == 20
    assert features[faces.FACE_STATUS].bytes_list.value[0].decode() in faces.STATUSES
    assert int64s(example, "label/au_ids") == list(range(1, 61))

    # filter: the 11 AUs
    run("filter", ["--examples", out("examples"), "--output", out("filtered")])
    filtered = shards(out("filtered"))
    assert set(filtered) == {"train", "validation", "test"}, filtered
    assert os.path.isfile(out("filtered/examples_summary.json"))
    example = first_example(filtered["train"][0])
    assert int64s(example, "label/au_ids") == AUS
    assert len(int64s(example, "label/au")) == len(AUS) and set(int64s(example, "label/au")) <= {0, 1, 999}

    # train: one short epoch, in the GPU image (on the CPU where there is no GPU)
    # the demo's recipe (pipeline/defaults.py PRESETS["demo"]): the defaults want ImageNet weights and a GPU
    run("train", ["--examples", out("filtered"), "--output", out("model"), "--backbone", "compactcnn", "--weights", "none",
                  "--optimizer", "adam", "--learning-rate", "0.002", "--epochs", "1", "--batch-size", "16"])
    for name in ("saved_model/saved_model.pb", "model.keras", "model_config.json", "history.json"):
        assert os.path.isfile(out(f"model/{name}")), name
    config = json.loads(open(out("model/model_config.json")).read())
    assert config["au_ids"] == AUS and config["task"] == "au", config
    history = json.loads(open(out("model/history.json")).read())
    assert history["epochs"] == [1] and len(history["metrics"]["loss"]) == 1, history

    # evaluate: a 1-epoch model is judged on the plumbing, so the thresholds bless it; no live model yet
    registry = out("registry")
    run("evaluate", ["--examples", out("filtered"), "--model", out("model"), "--output", out("evaluation"),
                     "--registry", registry, "--model-name", MODEL_NAME, "--min-macro-f1", "0", "--min-macro-auc", "0"])
    metrics = json.loads(open(out("evaluation/metrics.json")).read())
    assert "macro" in json.dumps(metrics)
    blessing = json.loads(open(out("evaluation/blessing.json")).read())
    assert blessing["blessed"] is True and "reasons" in blessing, blessing

    # push: a version folder, then LATEST
    run("push", ["--model", out("model"), "--evaluation", out("evaluation"), "--destination", registry,
                 "--model-name", MODEL_NAME, "--output", out("pushed")])
    latest = open(os.path.join(registry, MODEL_NAME, "LATEST")).read().strip()
    version = os.path.join(registry, MODEL_NAME, latest)
    for name in ("saved_model/saved_model.pb", "model_config.json", "metrics.json", "blessing.json"):
        assert os.path.isfile(os.path.join(version, name)), name
    assert json.loads(open(out("pushed/push.json")).read())["pushed"] is True

    # predict: the pushed model (following LATEST) on one demo face
    done = run("predict", ["--model", os.path.join(registry, MODEL_NAME), "--json", face_jpg])
    result = json.loads(done.stdout)
    assert result["version"] == latest and result["au_ids"] == AUS, result
    [scored] = result["images"]
    face = scored["faces"][0]  # the largest face first
    assert list(face["probabilities"]) == [f"AU{a}" for a in AUS]
    assert all(0.0 <= p <= 1.0 for p in face["probabilities"].values())
    assert face["status"] == faces.CROPPED and len(face["box"]) == 4, face
    x, y = face["box"][0] + face["box"][2] / 2, face["box"][1] + face["box"][3] / 2
    assert truth["face_x0"] < x < truth["face_x1"] and truth["face_y0"] < y < truth["face_y1"], (face, truth)

    # Everything the containers wrote into the mounted folder is the user's, and they can read it.
    written = written_files(work, seeded)
    assert len(written) > 50, written
    wrong = []
    for path in written:
        st = os.lstat(path)
        needed = stat.S_IRUSR | (stat.S_IXUSR if stat.S_ISDIR(st.st_mode) else 0)
        if (st.st_uid, st.st_gid) != tuple(user) or st.st_mode & needed != needed:
            wrong.append(f"{path}: {st.st_uid}:{st.st_gid} {stat.filemode(st.st_mode)}")
    assert not wrong, f"not owned by {user[0]}:{user[1]} or not readable by them:\n" + "\n".join(wrong[:20])
    print("seconds per step:", json.dumps(timings))
