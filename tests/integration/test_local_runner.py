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
def test_local_runner_records_status_time_and_outputs(tmp_path, monkeypatch):
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


@pytest.mark.slow
def test_local_runner_reports_a_failed_step(tmp_path, monkeypatch):
    import pipeline.dag

    monkeypatch.setattr(pipeline.dag, "STEPS", {"ingest": ingest})
    bad = tmp_path / "bad.txt"
    bad.write_text("not a sheet")
    result = run_pipeline({"source": str(bad)}, str(tmp_path / "run"), pipeline_func=ingest_only)
    assert not result.ok
    assert result.step("ingest").status == "failed"
    assert "ingest" in result.error
    assert "FAILED" in format_summary(result)
