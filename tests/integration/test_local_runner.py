"""pipeline/local.py on kfp.local: a one-step pipeline runs in a subprocess and the summary names its outputs; a
step that refuses its input ends the run with its one line, a crash with its traceback."""
import csv
import os
import socket
import subprocess
import sys

import pytest
from kfp import dsl

from components.common import images
from components.ingest.component import ingest
from pipeline.local import format_summary, run_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dsl.pipeline(name="ingest-only")
def ingest_only(source: str):
    ingest(source=source)


def write_sheet(path, n):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([[f"http://e.org/{i}.jpg"] + [0] * 60 for i in range(n)])
    return str(path)


@pytest.mark.slow
def test_local_runner_records_status_time_and_outputs(tmp_path, monkeypatch, capsys):
    import pipeline.dag

    monkeypatch.setattr(pipeline.dag, "STEPS", {"ingest": ingest})
    result = run_pipeline({"source": write_sheet(tmp_path / "s.csv", 3)}, str(tmp_path / "run"), pipeline_func=ingest_only)
    assert result.ok, result.error
    step = result.step("ingest")
    assert step.status == "succeeded" and step.seconds > 0
    manifest_dir = result.output_path("ingest", "manifest")
    assert os.path.exists(os.path.join(manifest_dir, "manifest.parquet"))
    text = format_summary(result)
    assert "ingest" in text and "succeeded" in text and manifest_dir in text
    # The console: a line as the step starts and one as it ends, with its figures; the executor's
    # output is in the step's log, not on the console.
    out = capsys.readouterr().out
    assert out.splitlines() == [f"{'ingest':<16} started",
                                f"{'ingest':<16} {'succeeded':<10} {step.seconds:6.1f}s  3 rows kept, 0 rejected"]
    assert step.log == str(tmp_path / "run" / "logs" / "ingest.log")
    log = open(step.log).read()
    assert "KFP Executor" in log and "Executing task" in log and "Wrote executor output file" in log

    # --verbose streams the executor's output as kfp.local does, and still keeps the log
    result = run_pipeline({"source": write_sheet(tmp_path / "s.csv", 3)}, str(tmp_path / "again"),
                          pipeline_func=ingest_only, verbose=True)
    assert result.ok and "KFP Executor" in capsys.readouterr().out
    assert "KFP Executor" in open(result.step("ingest").log).read()


@pytest.mark.slow
def test_local_runner_reports_a_failed_step(tmp_path, monkeypatch, capsys):
    import pipeline.dag

    monkeypatch.setattr(pipeline.dag, "STEPS", {"ingest": ingest})
    bad = tmp_path / "bad.txt"
    bad.write_text("not a sheet")
    result = run_pipeline({"source": str(bad)}, str(tmp_path / "run"), pipeline_func=ingest_only)
    assert not result.ok
    assert result.step("ingest").status == "failed"
    assert "ingest" in result.error
    assert "FAILED" in format_summary(result)
    # Where the cause is: ingest refused the sheet, in its words on the console, and the log named.
    log = str(tmp_path / "run" / "logs" / "ingest.log")
    refusal = result.step("ingest").refusal
    assert str(bad) in refusal and result.error == f"ingest refused: {refusal}; its log: {log}"
    out = capsys.readouterr().out
    assert f"    | refused: ingest: {refusal}\n    full log: {log}" in out and "Traceback" not in out
    assert f"refused: ingest: {refusal}\n" in open(log).read()


@dsl.component(base_image=images.CPU_IMAGE, install_kfp_package=False)
def crash(source: str):
    """Fails as a bug does: not a refusal."""
    raise KeyError(source)


@dsl.pipeline(name="crash-only")
def crash_only(source: str):
    crash(source=source)


@pytest.mark.slow
def test_a_crash_keeps_its_traceback_on_the_console_and_in_the_log(tmp_path, monkeypatch, capsys):
    import pipeline.dag

    monkeypatch.setattr(pipeline.dag, "STEPS", {"crash": crash})
    result = run_pipeline({"source": "the-key"}, str(tmp_path / "run"), pipeline_func=crash_only)
    log = str(tmp_path / "run" / "logs" / "crash.log")
    assert not result.ok and result.step("crash").refusal == ""
    assert result.error == f"step crash failed; its log: {log}"
    out = capsys.readouterr().out
    assert "    | Traceback (most recent call last):" in out and "    | KeyError: 'the-key'" in out
    assert "Traceback (most recent call last):" in open(log).read()


@pytest.mark.slow
def test_a_sheet_whose_urls_all_refuse_connections_ends_the_run_with_download_refused(tmp_path):
    # A TCP port bound but not listening: every connection to it is refused at once, and no one else can take it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        sheet = tmp_path / "sheet.csv"
        with open(sheet, "w", newline="") as f:
            csv.writer(f).writerows([[f"http://127.0.0.1:{port}/{i}.jpg"] + [0] * 60 for i in range(20)])
        done = subprocess.run(
            [sys.executable, "pipeline.py", "run", "--source", str(sheet), "--run-dir", str(tmp_path / "run"),
             "--runs-dir", str(tmp_path / "runs"), "--download-max-attempts", "1"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    console = done.stdout
    assert done.returncode == 1, console
    log = tmp_path / "run" / "logs" / "download.log"
    refusal = ("0 of 20 images downloaded (none): connection_refused 20 (100%). Is the image server running and "
               "reachable from here?")
    last = console.rstrip("\n").splitlines()[-1]
    assert last.startswith(f"the run failed: download refused: {refusal}") and last.endswith(f"; its log: {log}")
    assert f"    | refused: download: {refusal}" in console
    assert "Traceback" not in console and "DownloadError" not in console
    assert f"refused: download: {refusal}" in log.read_text()
