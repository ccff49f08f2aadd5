"""annotate and predict run in the CPU image on a pushed model and write their files.

As a plain user with --network none and only the work folder and the registry mounted: annotate on a folder of demo
scenes (in the image the compiled annotate spec gives its task; the Parquet contract of
components/common/annotations.py, a damaged file as a row), and predict on a short video (its rows as Parquet, its
plot by matplotlib)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import docker_run, hand_over  # tests/containers/conftest.py: `docker run` as README shows it

import face_media as media  # tests/conftest.py puts tests/data/evaluate on the path
import tiny_model as tiny
from components.common import annotations
from pipeline import demo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_SIZE = 6  # wild scenes: a few faces are enough to show the contract; each costs the 2-core machine a second
SHARD = re.compile(r"^annotations-(\d{5})-of-(\d{5})\.parquet$")

pytestmark = pytest.mark.slow


def annotate_image(path: str, image_cpu: str, image_gpu: str) -> str:
    """The image the annotate task's executor runs in, from the annotate spec compile.py writes for these tags."""
    done = subprocess.run([sys.executable, "compile.py", "--pipeline", "annotate", "--output", path, "--image-cpu",
                           image_cpu, "--image-gpu", image_gpu], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"compile.py --pipeline annotate failed:\n{done.stderr[-3000:]}"
    with open(path) as f:
        spec = yaml.safe_load(f)
    task = spec["root"]["dag"]["tasks"]["annotate"]
    label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
    return spec["deploymentSpec"]["executors"][label]["container"]["image"]


def owned_and_readable(folder: str, user: tuple[int, int]) -> list[str]:
    """What under folder is not the user's or not readable by them (empty when all is)."""
    wrong = []
    for parent, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(parent, name))
            if (st.st_uid, st.st_gid) != tuple(user) or not st.st_mode & 0o400:
                wrong.append(f"{os.path.join(parent, name)}: {st.st_uid}:{st.st_gid} {oct(st.st_mode)}")
    return wrong


def test_annotate_writes_the_parquet_contract_in_the_cpu_image(images, user, pushed_model, tmp_path):
    started = time.monotonic()
    image = annotate_image(str(tmp_path / "annotate.yaml"), images["cpu"], images["gpu"])
    assert image == images["cpu"], image

    work = tmp_path / "work"
    pictures = str(work / "pictures")
    demo.generate_demo(str(tmp_path / "demo"), DEMO_SIZE, 7, scene="wild", workers=1)
    shutil.copytree(str(tmp_path / "demo" / "images"), pictures)
    first = sorted(os.listdir(pictures))[0]
    with open(os.path.join(pictures, first), "rb") as f:
        head = f.read(300)
    with open(os.path.join(pictures, "cut.jpg"), "wb") as f:
        f.write(head)  # a damaged file: a row of its own, not a failed run
    with open(os.path.join(pictures, "notes.txt"), "w") as f:
        f.write("not an image\n")  # left out by the listing, and counted
    out = str(work / "annotations")
    hand_over(str(work), user)

    done = docker_run(image, ["python", "-m", "components.annotate", "--images", pictures, "--output", out,
                              "--model", pushed_model["model_root"], "--batch-size", "8"],
                      [str(work), pushed_model["registry"]], user, timeout=600)
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"annotate failed in {image}, exit {done.returncode}:\n{done.stderr[-4000:]}"
    assert f"{DEMO_SIZE + 1} images listed under {pictures} (1 other files left out)" in done.stdout, done.stdout
    assert f"annotations: {out}" in done.stdout

    # The contract: shards of the schema for the model's AUs, then the summary; nothing else.
    names = sorted(os.listdir(out))
    shards = [n for n in names if SHARD.match(n)]
    assert shards and names == sorted([*shards, annotations.SUMMARY_FILE]), names
    count = int(SHARD.match(shards[0]).group(2))
    assert [int(SHARD.match(n).group(1)) for n in shards] == list(range(count)), shards
    for name in shards:
        assert pq.read_schema(os.path.join(out, name)).equals(annotations.schema(tiny.AU_IDS)), name
    rows = annotations.read_annotations(out).to_pandas()
    summary = annotations.read_summary(out)
    version = pushed_model["version"]
    assert set(rows["model_version"]) == {version} and summary["model"]["version"] == version
    assert rows["url"].nunique() == DEMO_SIZE + 1 and rows["url"].str.startswith(pictures + os.sep).all()
    assert set(rows["status"]) <= set(annotations.STATUSES)

    by_url = rows.groupby("url").first()
    cut = by_url.loc[os.path.join(pictures, "cut.jpg")]
    assert cut["status"] == annotations.BAD and cut["reason"] in ("corrupt", "not_image"), cut

    scored = rows[rows["status"] == annotations.SCORED]
    assert scored["url"].nunique() >= DEMO_SIZE // 2, rows[["url", "status", "reason"]]  # the detector finds faces
    assert scored["face"].notna().all() and (scored[["x", "y", "w", "h"]] >= 0).all().all()
    au = [f"AU{a}" for a in tiny.AU_IDS]
    assert scored[au].apply(lambda c: c.between(0, 1)).all().all()
    assert (scored["AU12_active"] == (scored["AU12"] >= 0.5)).all()  # the thresholds pushed with the model
    others = rows[rows["status"] != annotations.SCORED]
    assert others["reason"].notna().all() and others["AU1"].isna().all()

    c = summary["counts"]
    assert c["images"] == DEMO_SIZE + 1 and c["rows"] == len(rows) and c["faces"] == len(scored)
    assert c["bad"] == 1 and summary["agreement"] is None  # a folder has no labels to agree with
    assert summary["positives"]["AU12"] == int(scored["AU12_active"].sum())
    wrong = owned_and_readable(out, user)
    assert not wrong, "\n".join(wrong[:20])
    print(f"annotate in the image: {seconds:.1f} s")


def test_predict_scores_a_video_in_the_cpu_image(images, user, pushed_model, tmp_path):
    started = time.monotonic()
    work = tmp_path / "work"
    work.mkdir()
    clip = str(work / "clip.mp4")
    media.face_video(clip, frames=6, fps=10.0, faces=1)
    hand_over(str(work), user)
    rows_path = str(work / "out" / "rows.parquet")

    done = docker_run(images["cpu"], ["python", "-m", "components.predict", "--json", "--model",
                                      pushed_model["model_root"], clip, "--output", rows_path],
                      [str(work), pushed_model["registry"]], user, timeout=600)
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"predict failed in {images['cpu']}, exit {done.returncode}:\n{done.stderr[-4000:]}"
    result = json.loads(done.stdout)
    assert result["version"] == pushed_model["version"] and result["au_ids"] == tiny.AU_IDS, result
    (video,) = result["videos"]
    assert video["error"] is None and (video["frames"], video["sampled"], video["with_face"]) == (6, 6, 6), video
    assert video["face_ids"] == 1 and video["rows"] == rows_path, video

    rows = pd.read_parquet(rows_path)  # pyarrow in the image wrote it
    assert len(rows) == 6 and sorted(rows["frame"]) == list(range(6)), rows
    assert {"timestamp", "face_id", "AU01_r", "AU01_c", "AU12_r", "AU12_c"} <= set(rows.columns)
    assert rows["AU12_r"].between(0, 1).all()
    # the AUs over time, drawn by matplotlib in the image
    assert video["plot"] == str(work / "out" / "rows.png")
    with open(video["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(video["plot"]) > 1000
    wrong = owned_and_readable(str(work / "out"), user)
    assert not wrong, "\n".join(wrong[:20])
    print(f"predict on a video in the image: {seconds:.1f} s")
