"""report's CLI run as a program (`python -m components.report`): it writes the page and refuses a missing folder."""
import os
import subprocess
import sys

from components.report import logic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def folders(tmp_path) -> dict[str, str]:
    out = {}
    for name, step in logic.REPORT_INPUTS:
        (tmp_path / step / name).mkdir(parents=True)
        out[name] = str(tmp_path / step / name)
    return out


def test_the_cli_writes_the_page_and_refuses_a_folder_that_is_not_there(tmp_path):
    given = folders(tmp_path)
    args = [f"--{name}={folder}" for name, folder in given.items()]
    done = subprocess.run([sys.executable, "-m", "components.report", *args, "--output", str(tmp_path / "r.html"),
                           "--run-name", "nightly"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "<title>Run nightly: succeeded</title>" in (tmp_path / "r.html").read_text()
    args[0] = f"--manifest={tmp_path / 'nowhere'}"
    done = subprocess.run([sys.executable, "-m", "components.report", *args, "--output", str(tmp_path / "r.html")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"report: --manifest {tmp_path / 'nowhere'} is not a folder" in done.stderr and "Traceback" not in done.stderr
