"""annotate end to end on demo scenes with a small pushed model: the step's CLI on a downloaded sheet (the Parquet
contract, bad images as rows, the agreement figures recomputed), `pipeline.py annotate` through kfp.local on a sheet
(a rerun with the same store fetches nothing) and on a folder, `submit --pipeline annotate`, and bad input."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pyarrow.parquet as pq
import pytest

import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path
from components.common import annotations, labels
from pipeline import defaults, demo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_SIZE = 40
SHARD = re.compile(r"^annotations-(\d{5})-of-(\d{5})\.parquet$")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Demo scenes, and a small model (it reads the face crop's colours) trained on face crops, pushed."""
    from components.common.faces import FaceSettings
    from components.push import logic as push_logic

    root = tmp_path_factory.mktemp("annotate")
    demo_dir = str(root / "demo")
    demo.generate_demo(demo_dir, DEMO_SIZE, 7, scene="wild", workers=1)
    model = tiny.make_model(str(root / "model"), tiny.GOOD, faces=FaceSettings().to_dict())
    evaluation = tiny.make_evaluation(str(root / "evaluation"), True)
    record = push_logic.run(model, evaluation, None, destination=str(root / "registry"), model_name="au",
                            infra_validate=False)
    return {"root": root, "demo": demo_dir, "model_root": str(root / "registry" / "au"), "version": record["version"]}


def run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore::FutureWarning"}
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def check_contract(folder: str, version: str) -> tuple[pd.DataFrame, dict]:
    """The folder holds annotate's files and nothing else, each shard of the contract's schema; (rows, summary)."""
    names = sorted(os.listdir(folder))
    shards = [n for n in names if SHARD.match(n)]
    assert names == sorted(shards + [annotations.SUMMARY_FILE]), names
    count = int(SHARD.match(shards[0]).group(2))
    assert [int(SHARD.match(n).group(1)) for n in shards] == list(range(count))
    for name in shards:
        assert pq.read_schema(os.path.join(folder, name)).equals(annotations.schema(tiny.AU_IDS))
    rows = annotations.read_annotations(folder).to_pandas()
    summary = annotations.read_summary(folder)
    assert set(rows["model_version"]) == {version} and summary["model"]["version"] == version
    assert set(rows["status"]) <= set(annotations.STATUSES)
    scored = rows[rows["status"] == "scored"]
    assert scored["face"].notna().all() and (scored[["x", "y", "w", "h"]] >= 0).all().all()
    assert scored[["AU1", "AU2", "AU12"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (scored["AU12_active"] == (scored["AU12"] >= 0.5)).all()  # the pushed thresholds: 0.4, 0.6, 0.5
    assert (scored["AU1_active"] == (scored["AU1"] >= 0.4)).all()
    others = rows[rows["status"] != "scored"]
    assert others["reason"].notna().all() and others["face"].isna().all() and others["AU1"].isna().all()
    c = summary["counts"]
    assert c["images"] == rows["key"].nunique() and c["faces"] == len(scored) and c["rows"] == len(rows)
    assert c["no_face"] == (rows.groupby("key")["status"].first() == "no_face").sum()
    assert summary["positives"]["AU12"] == int(scored["AU12_active"].sum())
    return rows, summary


def recomputed_agreement(rows: pd.DataFrame, manifest_dir: str) -> dict:
    """Per AU (accuracy, F1, kappa) of each image's largest face against the manifest's known labels, by sklearn."""
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

    manifest = pd.read_parquet(os.path.join(manifest_dir, "manifest.parquet"))
    first = rows[(rows["status"] == "scored") & (rows["face"] == 0)].merge(manifest, on="key", suffixes=("", "_m"))
    out = {}
    for a in tiny.AU_IDS:
        known = first[first[f"AU{a}_m"] != labels.UNKNOWN]
        truth, predicted = known[f"AU{a}_m"].astype(int), known[f"AU{a}_active"].astype(int)
        out[f"AU{a}"] = (len(known), accuracy_score(truth, predicted), f1_score(truth, predicted),
                         cohen_kappa_score(truth, predicted))
    return out


def test_the_cli_annotates_a_downloaded_sheet_with_bad_images_as_rows(world, tmp_path):
    from components.download import logic as download_logic
    from components.ingest import logic as ingest_logic

    manifest_dir, downloads_dir = str(tmp_path / "manifest"), str(tmp_path / "downloads")
    with demo.DemoServer(world["demo"], faults=True, seed=0, port=0, stall_seconds=2) as server:
        sheet = demo.write_sheet(world["demo"], server, str(tmp_path / "sheet.xlsx"), seed=0)
        ingest_logic.run(sheet, manifest_dir)
        download_logic.run(manifest_dir, downloads_dir, timeout=1.0, max_attempts=1, allow_private=True,
                           progress=False, print_table=False)
    ledger = pd.read_parquet(os.path.join(downloads_dir, "ledger.parquet"))
    ok = ledger[ledger["status"] == "ok"]
    assert 0 < len(ok) < len(ledger)  # the demo's faults failed some URLs
    # A bulk run meets files that rot on disk: one truncated, one gone since the download.
    truncated, gone = ok.iloc[0], ok.iloc[1]
    path = os.path.join(downloads_dir, "images", f"{truncated.key}.{truncated.format}")
    with open(path, "r+b") as f:
        f.truncate(200)
    os.remove(os.path.join(downloads_dir, "images", f"{gone.key}.{gone.format}"))

    out = str(tmp_path / "annotations")
    done = run(["-m", "components.annotate", "--manifest", manifest_dir, "--downloads", downloads_dir, "--output", out,
                "--model", world["model_root"], "--batch-size", "8"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"annotations: {out}" in done.stdout and "AU12" in done.stdout

    rows, summary = check_contract(out, world["version"])
    assert set(rows["key"]) == set(ok["key"])  # every image downloaded ok, and only those
    by_key = rows.groupby("key").first()
    assert by_key.loc[truncated.key, "status"] == "bad" and by_key.loc[truncated.key, "reason"] in ("corrupt",
                                                                                                    "not_image")
    assert by_key.loc[gone.key, "reason"] == "missing" and "does not exist" in by_key.loc[gone.key, "message"]
    c = summary["counts"]
    assert c["bad"] == 2 and c["not_downloaded"] == len(ledger) - len(ok)
    assert summary["counters"]["images"] == c["images"] and summary["counters"]["missing"] == 1
    assert c["images_scored"] > 0.8 * len(ok)  # the detector finds the demo's faces

    agreement = summary["agreement"]
    assert agreement["compared"] == c["images_scored"]
    for name, (known, accuracy, f1, kappa) in recomputed_agreement(rows, manifest_dir).items():
        mine = agreement["per_au"][name]
        assert mine["known"] == known > 0
        assert mine["accuracy"] == pytest.approx(accuracy) and mine["f1"] == pytest.approx(f1)
        assert mine["kappa"] == pytest.approx(kappa)


def test_pipeline_annotate_runs_ingest_download_annotate_and_resumes_from_the_store(world, tmp_path):
    store, out = str(tmp_path / "store"), str(tmp_path / "out")
    with demo.DemoServer(world["demo"], faults=False, seed=0, port=0) as server:
        sheet = demo.write_sheet(world["demo"], server, str(tmp_path / "sheet.xlsx"), seed=0)
        summaries = []
        for attempt in ("first", "again"):
            run_dir = str(tmp_path / attempt)
            done = run(["pipeline.py", "annotate", "--source", sheet, "--model", world["model_root"],
                        "--download-store", store, "--output", out, "--run-dir", run_dir, "--download-timeout", "3"],
                       timeout=900)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            for step in ("ingest", "download", "annotate"):
                assert re.search(rf"^{step}\s+succeeded", done.stdout, re.M), done.stdout
            result = json.load(open(os.path.join(run_dir, "run_summary.json")))
            downloads = next(s for s in result["steps"] if s["name"] == "download")["outputs"]["downloads"]
            summaries.append(json.load(open(os.path.join(downloads, "download_summary.json"))))
    first, again = summaries
    assert first["run"]["fetched_ok"] > 0 and again["run"]["fetched_ok"] == 0  # the store held every image
    assert again["ok"] == first["ok"]
    rows, summary = check_contract(out, world["version"])
    assert summary["counts"]["images"] == first["ok"] and summary["agreement"]["compared"] > 0


def test_pipeline_annotate_on_a_folder_lists_it_instead_of_ingest_and_download(world, tmp_path):
    """With two local Beam workers, as a run of more than IMAGES_PER_WORKER images gets: each a process of its own
    that loads the model (and the face detector) once."""
    out, run_dir = str(tmp_path / "out"), str(tmp_path / "run")
    done = run(["pipeline.py", "annotate", "--source", os.path.join(world["demo"], "images"), "--model",
                world["model_root"], "--output", out, "--run-dir", run_dir,
                "--beam-args=--direct_num_workers=2 --direct_running_mode=multi_processing"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{DEMO_SIZE} images listed under" in done.stdout
    assert re.search(r"^annotate\s+succeeded", done.stdout, re.M) and not re.search(r"^ingest\s", done.stdout, re.M)
    rows, summary = check_contract(out, world["version"])
    assert summary["counts"]["images"] == DEMO_SIZE and summary["agreement"] is None
    assert all(u.startswith(os.path.join(world["demo"], "images")) for u in rows["url"])


def test_the_cli_refuses_a_model_without_latest_in_one_line(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.jpg").write_bytes(tiny.jpeg((255, 0, 0), size=64))
    os.makedirs(tmp_path / "registry" / "au" / "20260101T000000Z-half" / "saved_model")
    done = run(["-m", "components.annotate", "--images", str(tmp_path / "pics"), "--output", str(tmp_path / "o"),
                "--model", str(tmp_path / "registry" / "au")], timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("refused: annotate: ")
    assert "has no LATEST" in done.stderr


def test_submit_annotate_uploads_the_annotate_dag_and_runs_it(kfp_server):
    from pipeline.cluster import cli

    parser = argparse.ArgumentParser()
    cli.add_submit_arguments(parser)
    args = parser.parse_args(["--host", kfp_server.url, "--pipeline", "annotate", "--source", "gs://b/sheet.xlsx",
                              "--download-store", "gs://b/store", "--model", "gs://b/registry/au-detector",
                              "--pipeline-root", "gs://b/root", "--which-faces", "largest"])
    assert cli.submit(args) == 0
    (pipeline,) = kfp_server.pipelines.values()
    assert pipeline["display_name"] == defaults.ANNOTATE_PIPELINE_NAME
    (version,) = kfp_server.versions.values()
    assert set(version["spec"][0]["root"]["dag"]["tasks"]) == {"ingest", "download", "annotate"}
    (run_,) = kfp_server.runs
    assert run_["runtime_config"]["parameters"] == {
        "source": "gs://b/sheet.xlsx", "download_store": "gs://b/store", "model": "gs://b/registry/au-detector",
        "which_faces": "largest", "download_allow_private": False}
