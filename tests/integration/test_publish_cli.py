"""publish's CLI run as a program (`python -m components.publish`): nothing to publish is one line and exit 2."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_cli_refuses_a_missing_source_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "components.publish", "--source", str(tmp_path / "missing"),
                           "--destination", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "has no file to publish" in done.stderr and "Traceback" not in done.stderr
