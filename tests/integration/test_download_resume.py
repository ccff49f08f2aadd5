"""The download step resumes: after a SIGKILL mid-run, on a grown manifest, and with a gs:// store (emulated)."""
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from download_server import FaultServer

from components.common.labels import image_key
from components.download import logic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_manifest(folder, urls) -> str:
    os.makedirs(folder, exist_ok=True)
    pd.DataFrame({"key": [image_key(u) for u in urls], "url": urls, "row": range(2, len(urls) + 2)}) \
        .to_parquet(os.path.join(folder, "manifest.parquet"))
    return str(folder)


def journal_rows(folder) -> list[dict]:
    rows = []
    for path in glob.glob(os.path.join(folder, "journal", "*.jsonl")):
        with open(path, "rb") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass  # the line the kill cut short
    return rows


def cli(manifest, out, *extra) -> list[str]:
    return [sys.executable, "-m", "components.download", "--manifest", manifest, "--output", str(out), "--workers", "4",
            "--per-host", "4", "--timeout", "5", "--backoff", "0.01", "--no-progress", *extra]


def check_output(out, urls):
    """Every URL settled exactly once, each ok row's file present and whole, no temp file left as an image."""
    led = pd.read_parquet(os.path.join(out, "ledger.parquet"))
    assert sorted(led.url) == sorted(urls) and led.key.is_unique
    for r in led[led.status == "ok"].itertuples():
        with open(os.path.join(out, "images", f"{r.key}.{r.format}"), "rb") as f:
            data = f.read()
        assert len(data) == r.bytes and hashlib.sha256(data).hexdigest() == r.sha256
    names = os.listdir(os.path.join(out, "images"))
    assert all(n.split(".")[0] in set(led.key) and n.endswith((".jpg", ".png")) for n in names)
    assert not glob.glob(os.path.join(out, "**", "*.part"), recursive=True)
    return led.set_index("url")


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_settles_every_url_exactly_once(tmp_path):
    with FaultServer(latency=0.05) as srv:
        urls = [srv.url(f"/img/{i}.jpg") for i in range(100)] + [srv.url("/nope"), srv.url("/flaky/k?fail=1")]
        m = write_manifest(tmp_path / "m", urls)
        out, st = tmp_path / "out", tmp_path / "store"
        proc = subprocess.Popen(cli(m, out, "--store", str(st)), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            while len(journal_rows(out)) < 20:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "the run settled nothing in 60 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        settled = {r["url"] for r in journal_rows(out)}
        assert 20 <= len(settled) < len(urls)
        # What a kill leaves: rows for files that are there, maybe a temp file, never a row for a missing file.
        for r in journal_rows(out):
            if r["status"] == "ok":
                assert os.path.getsize(out / "images" / f"{r['key']}.{r['format']}") == r["bytes"]

        done = subprocess.run(cli(m, out, "--store", str(st)), cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        led = check_output(out, urls)
        assert led.loc[srv.url("/nope"), "error_class"] == "http_404"
        assert (led.drop(srv.url("/nope")).status == "ok").all()
        for u in urls:
            path = u[len(srv.base):]
            if u in settled:
                assert srv.count(path) == 1 or path.startswith("/flaky"), u  # never fetched again
            else:
                assert srv.count(path) >= 1, u
        # Only the URLs in flight at the kill can have been fetched twice.
        assert sum(srv.counts.values()) <= len(urls) + 1 + 4
        # A third run, with another output, takes everything from the store: no request at all.
        before = sum(srv.counts.values())
        again = subprocess.run(cli(m, tmp_path / "out2", "--store", str(st)), cwd=REPO, capture_output=True,
                               text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        assert sum(srv.counts.values()) == before
        check_output(tmp_path / "out2", urls)


def test_sigterm_stops_cleanly_and_keeps_what_was_settled(tmp_path):
    with FaultServer(latency=0.05) as srv:
        # Two stalled URLs hold two workers: a stop must cut them, not wait out their 90 s deadline.
        urls = [srv.url(f"/slow/{i}?s=120") for i in range(2)] + [srv.url(f"/img/t{i}.jpg") for i in range(200)]
        m = write_manifest(tmp_path / "m", urls)
        proc = subprocess.Popen(cli(m, tmp_path / "out", "--timeout", "30"), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(journal_rows(tmp_path / "out")) < 10 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - stopped < 25  # far less than the stalled requests' 30 s read timeout
        assert proc.returncode == 130 and "rerun to resume" in err and "Traceback" not in err
        summary = json.loads((tmp_path / "out" / "download_summary.json").read_text())
        assert not summary["complete"] and 10 <= summary["total"] < 200
        led = pd.read_parquet(tmp_path / "out" / "ledger.parquet")
        assert not set(urls[:2]) & set(led.url)  # cut by the stop: left for the next run, not called timeouts
        for r in led.itertuples():
            assert os.path.getsize(tmp_path / "out" / "images" / f"{r.key}.jpg") == r.bytes


def test_incremental_run_on_a_grown_manifest_fetches_only_what_is_new(tmp_path):
    with FaultServer() as srv:
        first = [srv.url(f"/img/{i}.jpg") for i in range(12)] + [srv.url("/nope"), srv.url("/status/503")]
        st = str(tmp_path / "store")
        kw = dict(store=st, workers=4, max_attempts=1, backoff=0.0, progress=False, print_table=False)
        logic.run(write_manifest(tmp_path / "m1", first), str(tmp_path / "run1"), **kw)
        grown = first + [srv.url(f"/img/new{i}.png") for i in range(5)]
        before = dict(srv.counts)
        summary = logic.run(write_manifest(tmp_path / "m2", grown), str(tmp_path / "run2"), **kw)
        fetched = {p for p, n in srv.counts.items() if n > before.get(p, 0)}
        assert fetched == {"/status/503"} | {f"/img/new{i}.png" for i in range(5)}
        led = check_output(tmp_path / "run2", grown)
        assert (led.loc[[u for u in grown if "/img/" in u], "status"] == "ok").all()
        assert summary["total"] == 19 and summary["ok"] == 17 and summary["run"]["copied_from_store"] == 12


@pytest.mark.slow
def test_gcs_store_keeps_images_and_ledger_across_runs(tmp_path):
    pytest.importorskip("gcp_storage_emulator")
    from gcs_emulator import gcs_emulator

    from components.common import storage

    with FaultServer() as srv, gcs_emulator("dl-bucket"):
        urls = [srv.url(f"/img/{i}.jpg") for i in range(6)] + [srv.url("/nope")]
        m = write_manifest(tmp_path / "m", urls)
        st = "gs://dl-bucket/emotionet/downloads"
        kw = dict(store=st, workers=3, max_attempts=1, progress=False, print_table=False)
        logic.run(m, str(tmp_path / "a"), **kw)
        names = list(storage.list_files(st))
        assert sum("/images/" in n for n in names) == 6 and f"{st}/ledger.parquet" in names
        assert not any("/journal/" in n for n in names)  # folded into the ledger at the end
        before = sum(srv.counts.values())
        summary = logic.run(m, str(tmp_path / "b"), **kw)
        assert sum(srv.counts.values()) == before and summary["run"]["copied_from_store"] == 6
        check_output(tmp_path / "b", urls)
