"""TensorFlow's own gs:// (tf.io.gfile, tf.data) against the Cloud Storage emulator, and train reading gs:// examples.

TensorFlow's GCS filesystem cannot be pointed at an emulator; tf_gcs_bridge routes it there (see
its docstring). TensorFlow runs in a subprocess started inside the bridge, as the train step runs
in its container: its GCS settings and caches are fixed once per process.
"""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from components.common import examples, storage
from components.common import model as model_contract

from gcs_emulator import gcs_emulator
from tf_gcs_bridge import tf_gcs_bridge

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# What the subprocess writes with TensorFlow: 2 MiB, which it uploads as a chunked PUT after an
# Expect: 100-continue (both handled by the bridge).
PAYLOAD_SIZE = 2 * 1024 * 1024


def _payload(size: int = PAYLOAD_SIZE) -> bytes:
    return bytes(i * 7 % 251 for i in range(size))


_GFILE_CHILD = f"""
import json, tensorflow as tf
g = tf.io.gfile
out = {{
    "exists": g.exists("gs://bucket/from-storage/hello.txt"),
    "missing": g.exists("gs://bucket/from-storage/nothing.txt"),
    "isdir": g.isdir("gs://bucket/from-storage"),
    "glob": g.glob("gs://bucket/from-storage/*.txt"),
    "listdir": sorted(g.listdir("gs://bucket/from-storage")),
    "text": g.GFile("gs://bucket/from-storage/hello.txt", "r").read(),
}}
with g.GFile("gs://bucket/from-tf/data.bin", "wb") as f:
    f.write(bytes(i * 7 % 251 for i in range({PAYLOAD_SIZE})))  # _payload()
with g.GFile("gs://bucket/from-tf/note.txt", "w") as f:
    f.write("written by tf.io.gfile")
out["written_size"] = g.stat("gs://bucket/from-tf/data.bin").length
print("RESULT " + json.dumps(out))
"""

_TRAIN_CHILD = """
import os, shutil, sys
import tensorflow as tf
from components.train import synthetic
from components.train.__main__ import main

local = sys.argv[1]
synthetic.write_examples(local, {"train": 32, "validation": 8, "test": 8}, size=32, shards=2)
for name in sorted(os.listdir(local)):
    tf.io.gfile.copy(os.path.join(local, name), "gs://bucket/examples/" + name)
shutil.rmtree(local)  # train can find them on gs:// only
sys.exit(main(sys.argv[2:]))
"""


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}  # holds the emulator's and the bridge's settings
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _bridge_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tf-gcs-bridge")]


@pytest.fixture
def bridge():
    with gcs_emulator("bucket") as url, tf_gcs_bridge(url) as b:
        yield b
    assert not _bridge_threads()


def test_tf_gfile_reads_and_writes_gcs_through_the_bridge(bridge):
    storage.write_text("gs://bucket/from-storage/hello.txt", "written by google-cloud-storage")
    storage.write_text("gs://bucket/from-storage/other.txt", "x")

    proc = _run(["-c", _GFILE_CHILD], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["exists"] and not result["missing"] and result["isdir"]
    assert result["glob"] == ["gs://bucket/from-storage/hello.txt", "gs://bucket/from-storage/other.txt"]
    assert result["listdir"] == ["hello.txt", "other.txt"]
    assert result["text"] == "written by google-cloud-storage"

    payload = _payload()
    assert result["written_size"] == len(payload)
    assert storage.read_bytes("gs://bucket/from-tf/data.bin") == payload
    assert storage.read_text("gs://bucket/from-tf/note.txt") == "written by tf.io.gfile"

    # It was TensorFlow's traffic, through the bridge: JSON API stat/list, media reads, resumable uploads.
    paths = [p for _, p, _ in bridge.requests]
    assert any(p.startswith("/storage/v1/b/bucket/o/") for p in paths)
    assert any(p.startswith("/bucket/from-storage%2Fhello.txt") for p in paths)
    assert any(m == "PUT" and "uploadType=resumable" in p for m, p, _ in bridge.requests)
    assert all(s < 500 for _, _, s in bridge.requests), bridge.requests


def test_train_reads_its_examples_from_gcs(tmp_path, bridge):
    out = tmp_path / "model"
    args = ["--examples", "gs://bucket/examples", "--output", str(out), "--backbone", "compactcnn",
            "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--optimizer", "adam", "--weights", "none"]
    # One process (one TensorFlow start-up on 2 cores): it writes the examples as train's tests do,
    # copies them to gs:// with tf.io.gfile, removes the local ones, then runs the train CLI.
    proc = _run(["-c", _TRAIN_CHILD, str(tmp_path / "examples"), *args], timeout=240)
    log = proc.stdout + proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert sorted(f.rsplit("/", 1)[1] for f in storage.list_files("gs://bucket/examples")) == sorted(
        [examples.shard_name(s, i, 2) for s in examples.SPLITS for i in range(2)] + [examples.EXAMPLES_SUMMARY_FILE])
    assert not (tmp_path / "examples").exists()
    assert "32 train / 8 validation examples" in proc.stdout
    assert "4/4" in proc.stdout  # 32 examples in batches of 8: the whole train split was read

    # Every train and validation shard was read by TensorFlow from gs://, through the bridge.
    read = {p.split("%2F")[-1] for m, p, s in bridge.requests if m == "GET" and p.startswith("/bucket/examples%2F")}
    assert read == {examples.shard_name(s, i, 2) for s in ("train", "validation") for i in range(2)}
    assert all(s < 400 or s == 404 for _, _, s in bridge.requests), bridge.requests  # 404: copy's "is it there?"

    for name in (model_contract.SAVED_MODEL_DIR + "/saved_model.pb", model_contract.KERAS_FILE,
                 model_contract.MODEL_CONFIG_FILE, model_contract.HISTORY_FILE):
        assert (out / name).is_file(), name
    config = json.loads((out / model_contract.MODEL_CONFIG_FILE).read_text())
    assert config["training"]["examples"] == "gs://bucket/examples"
    assert config["training"]["train_examples"] == 32 and config["training"]["validation_examples"] == 8
    assert config["training"]["epochs_run"] == 1
    assert json.loads((out / model_contract.HISTORY_FILE).read_text())["epochs"] == [1]
