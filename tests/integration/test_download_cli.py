"""The download CLI as a container runs it (a subprocess): a manifest whose URLs all refuse connections is refused
with one line on stderr, `refused: download: <why>`, exit status 2 and no traceback."""
import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

from components.ingest import logic as ingest

REPO = Path(__file__).resolve().parents[2]


def test_no_image_downloaded_is_one_line_and_exit_2(tmp_path):
    # A TCP port bound but not listening: every connection to it is refused at once, and no one else can take it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with open(tmp_path / "sheet.csv", "w", newline="") as f:
            csv.writer(f).writerows([[f"http://127.0.0.1:{port}/{i}.jpg"] + [0] * 60 for i in range(5)])
        ingest.run(str(tmp_path / "sheet.csv"), str(tmp_path / "manifest"))
        done = subprocess.run(
            [sys.executable, "-m", "components.download", "--manifest", str(tmp_path / "manifest"),
             "--output", str(tmp_path / "downloads"), "--max-attempts", "1", "--no-progress"],
            cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "refused: download: 0 of 5 images downloaded (none): connection_refused 5 (100%). Is the image server running "
        "and reachable from here? The ledger keeps every URL's error; rerun when it is fixed (transient failures are "
        "fetched again)"]
    assert "connection_refused" in done.stdout  # the step's error table, before it refuses
