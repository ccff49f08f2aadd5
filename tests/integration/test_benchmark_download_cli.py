"""benchmarks/download.py run as a program at tiny settings (no img2dataset): it serves JPEGs on 127.0.0.1 and prints
one table per connection cost."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "download.py")


def test_a_tiny_run_prints_one_table_per_connection_cost():
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--urls", "40", "--workers", "8", "--latency", "0.01", "--connect-latency", "0,0.02",
         "--image-size", "96x64", "--no-img2dataset"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "40 URLs of 96x64 JPEG" in out and "latency bound = workers / latency = 800 images/s" in out
    assert "(a new connection costs nothing)" in out and "+ 20 ms per new connection" in out
    ours = re.findall(r"^download step \(this repo\)\s+(\d+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert len(ours) == 2 and all(int(ok) == 40 and float(rate) > 0 for ok, _, rate in ours), out
    assert out.count("skipped (--no-img2dataset)") == 4  # two modes in each of two scenarios
