"""predict's CLI run as a program (`python -m components.predict`): its help and a one-line error without a traceback."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_module_cli_runs_as_a_program(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "components.predict", "--help"], capture_output=True, text=True,
                               timeout=60, check=True, cwd=REPO).stdout
    assert "--model" in help_text and "--json" in help_text
    done = subprocess.run([sys.executable, "-m", "components.predict", "--model", str(tmp_path), str(tmp_path / "x.jpg")],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and "x.jpg does not exist" in done.stderr and "Traceback" not in done.stderr
