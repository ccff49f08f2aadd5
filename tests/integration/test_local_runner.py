"""pipeline/local.py on kfp.local: a one-step pipeline runs in a subprocess and the summary names its outputs."""
import csv
import os

import pytest
from kfp import dsl

from components.ingest.component import ingest
from pipeline.local import format_summary, run_pipeline


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
    # Where the cause is: the step's last log lines on the console, and the log named.
    log = str(tmp_path / "run" / "logs" / "ingest.log")
    assert result.error == f"step ingest failed; its log: {log}"
    out = capsys.readouterr().out
    assert f"    full log: {log}" in out and "    | " in out and "bad.txt" in out
