"""benchmarks/predict.py run as a program at tiny settings with tiny_model's face-crop model: it prints its table, a
row per measurement, each with a rate, a CPU time and a peak RSS."""
import os
import re
import subprocess
import sys

import pytest
import tiny_model  # tests/data/evaluate, put on the path by tests/conftest.py

from components.common.faces import FaceSettings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "predict.py")
ROW = re.compile(r"^\| (?P<run>[^|]+?)\s+\|\s+(?P<count>[\d,]+) \|\s+(?P<of>images|frames) \|\s+(?P<rate>[\d.]+|n/a) \|"
                 r"\s+(?P<share>\d+%|-|n/a) \|\s+(?P<cpu>[\d.]+|n/a) \|\s+(?P<cpu_share>\d+%|-|n/a) \|"
                 r"\s+(?P<startup>[\d.]+|-) \|\s+(?P<rss>\d+) \|\s+(?P<load>[\d.]+) \|$", re.M)


@pytest.mark.slow
def test_a_tiny_run_prints_its_table(tmp_path):
    model = tiny_model.make_model(str(tmp_path / "model"), tiny_model.GOOD, faces=FaceSettings().to_dict())
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--model", model, "--photos", "3", "--images", "3", "--big-images", "0",
         "--annotate-images", "5", "--frames", "6", "--big-frames", "0", "--batch-size", "2", "--cache", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"model: {model}" in out and "3 distinct 640x480 JPEGs with one face" in out, out
    assert "| run " in out and "| of detector alone (CPU) |" in out, out
    rows = [m.groupdict() for m in ROW.finditer(out)]
    cores = len(os.sched_getaffinity(0))
    assert [(r["run"], r["count"], r["of"]) for r in rows] == [
        ("face detector alone, 1 thread (read + decode + detect)", "3", "images"),
        (f"face detector alone, {cores} threads: the bound", "3", "images"),
        ("predict in-process (Scorer.score, files read)", "3", "images"),
        ("predict CLI --csv (rate after start-up)", "3", "images"),
        ("annotate CLI --images (3 and 5: the rate between)", "5", "images"),
        (f"face detector alone, {cores} threads (OpenCV decode + detect)", "6", "frames"),
        ("predict in-process (score_video, every frame)", "6", "frames"),
    ], out
    for r in rows:
        assert int(r["rss"]) > 0, r
        # Measured in-process, or after predict's CSV header: always a rate. A few images are less than the noise of
        # a start-up, so a CLI's CPU time, and annotate's rate (the time between two runs), may have none.
        if "CLI" not in r["run"]:
            assert float(r["rate"]) > 0 and float(r["cpu"]) > 0, r
        elif r["run"].startswith("predict"):
            assert float(r["rate"]) > 0 and float(r["startup"]) > 0, r
        assert (r["share"] == "-") == r["run"].startswith("face detector alone"), r
        if "CLI" not in r["run"]:
            assert r["startup"] == "-", r
    # The pictures are what the benchmark says: every photo and every frame has its face found and scored.
    found = re.findall(r"^  done: (.+?), (\d+) (?:images|frames), (\d+) with a face:", out, re.M)
    assert len(found) == 5 and all(n == with_face for _, n, with_face in found), out
    assert len(os.listdir(tmp_path / "cache" / "photos-n3-seed0")) == 3
