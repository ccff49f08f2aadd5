"""pipeline/containers.py against a real `docker` command line: none on the PATH, and a stand-in whose daemon does not
answer behind `pipeline.py run --runner docker` (a subprocess)."""
import os
import subprocess
import sys

import pytest

from pipeline import containers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_no_docker_command_says_what_to_install(monkeypatch):
    # containers._docker really tries to start `docker`; with no such program on the PATH it must say what to install.
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(containers.ContainerError, match="apt-get install docker.io"):
        containers.check_docker()


def test_run_in_docker_without_a_daemon_stops_before_anything_runs(tmp_path):
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}")
    proc = subprocess.run([sys.executable, "pipeline.py", "run", "--runner", "docker", "--runs-dir", str(tmp_path / "runs")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "pipeline.py run --runner docker: no Docker daemon answers (Cannot connect" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()
