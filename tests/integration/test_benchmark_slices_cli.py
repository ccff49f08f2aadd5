"""benchmarks/slices.py run as a program on a tiny demo world (one epoch): it prints evaluate's slices beside the demo's
true conditions, and leaves the evaluation folder with its errors gallery."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "slices.py")


def test_a_tiny_run_prints_both_groupings(tmp_path):
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--train-size", "20", "--test-size", "20", "--epochs", "1", "--min-slice-size", "1",
         "--cache", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=1500, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Slices evaluate derives (metrics.json):" in out and "by the demo's true conditions:" in out
    examples = int(re.search(r"Whole held-out test split: (\d+) examples", out).group(1))
    assert examples > 0
    # Every test example is in one value of each condition, so a condition's groups add up to the split.
    grey = [int(n) for n in re.findall(r"^\| true grey \| [^|]+ \| (\d+) \|", out, re.M)]
    assert sum(grey) == examples, out
    assert re.search(r"^\| grey \| colour \| \d+ \| [\d.-]+ \| [\d.-]+ \|$", out, re.M), out
    assert "weakest of evaluate's slices:" in out and "weakest of true conditions:" in out
    work = next(p for p in tmp_path.iterdir() if p.name.startswith("run-n20-t20-e1"))
    saved = json.loads((work / "slices.json").read_text())
    assert saved["derived"] and saved["truth"]
    errors = json.loads((work / "evaluation" / "errors.json").read_text())
    assert errors["per_au"] and all(e["label"] in (0, 1) for a in errors["per_au"] for e in a["false_positives"])
