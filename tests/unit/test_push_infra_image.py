"""Push's infra validation in a Docker image (--infra-image): the `docker run` it builds, and its refusal when docker
cannot run the image. The run itself is tests/containers/test_push_infra_in_image.py."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from components.common import registry
from components.push import infra, logic
from components.push.__main__ import main

import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path

IMAGE = "emotionet-au/pipeline-cpu:local"


def test_the_docker_command_runs_the_server_in_the_image_with_the_model_read_only(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    link = tmp_path / "link"
    link.symlink_to(model)  # a container mounts the folder itself, not a link to it
    command = infra.docker_command(IMAGE, str(link), 8123, 64, "au-infra-x", user=(1000, 1001))
    assert command == ["docker", "run", "--rm", "--init", "--name", "au-infra-x", "--network", "host", "--user", "1000:1001",
                       "-e", "HOME=/tmp", "-v", f"{model}:/model:ro", IMAGE,
                       "python", "-m", "components.serve", "--model", "/model", "--host", "127.0.0.1",
                       "--port", "8123", "--poll-s", "0", "--max-instances", "64"]


def test_the_docker_command_runs_as_this_process_s_user_by_default(tmp_path):
    command = infra.docker_command(IMAGE, str(tmp_path), 1, 64, "n")
    assert command[command.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"


def _docker(monkeypatch, which: str | None, answers: dict[str, subprocess.CompletedProcess]) -> list[list[str]]:
    """A stand-in docker: `which` is where the command is (None: not installed), answers what each subcommand says."""
    calls = []

    def run(args, **kwargs):
        calls.append(args)
        return answers[args[1]]

    monkeypatch.setattr(infra.shutil, "which", lambda name: which if name == "docker" else None)
    monkeypatch.setattr(infra.subprocess, "run", run)
    return calls


def _done(code: int, out: str = "", err: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], code, out, err)


def test_no_docker_command_is_refused_saying_what_to_do(monkeypatch):
    calls = _docker(monkeypatch, None, {})
    with pytest.raises(infra.InfraUnavailable) as e:
        infra.check_docker(IMAGE)
    assert str(e.value) == (f"infra validation asked for image {IMAGE} but there is no `docker` command on this "
                            "machine; run without --infra-image or start Docker")
    assert calls == []


def test_a_stopped_daemon_is_refused_with_what_docker_said(monkeypatch):
    said = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
    _docker(monkeypatch, "/usr/bin/docker", {"version": _done(1, "", "Client: 26.1\n" + said)})
    with pytest.raises(infra.InfraUnavailable) as e:
        infra.check_docker(IMAGE)
    assert str(e.value) == (f"infra validation asked for image {IMAGE} but docker cannot reach its daemon ({said}); "
                            "run without --infra-image or start Docker")


def test_an_image_the_daemon_does_not_hold_is_refused_not_pulled(monkeypatch):
    calls = _docker(monkeypatch, "/usr/bin/docker", {"version": _done(0, "26.1.5\n"), "image": _done(1, "", "No such")})
    with pytest.raises(infra.InfraUnavailable) as e:
        infra.check_docker(IMAGE)
    assert "has no such image: build it (`make images`) or `docker pull` it" in str(e.value)
    assert [c[:3] for c in calls] == [["docker", "version", "--format"], ["docker", "image", "inspect"]]


def test_a_running_daemon_with_the_image_passes(monkeypatch):
    _docker(monkeypatch, "/usr/bin/docker", {"version": _done(0, "26.1.5\n"), "image": _done(0, "sha256:ab\n")})
    assert infra.check_docker(IMAGE) is None


def _candidate(tmp_path: Path) -> dict:
    model = tmp_path / "model"
    (model / "saved_model").mkdir(parents=True)
    (model / "saved_model" / "saved_model.pb").write_bytes(b"graph")  # never loaded: the refusal comes first
    return {"model": str(model), "evaluation": tiny.make_evaluation(str(tmp_path / "evaluation"), True),
            "dest": str(tmp_path / "registry"), "out": tmp_path / "out"}


def test_push_refuses_when_the_image_cannot_be_run_and_pushes_nothing(monkeypatch, tmp_path):
    _docker(monkeypatch, None, {})
    c = _candidate(tmp_path)
    with pytest.raises(logic.PushError, match=f"asked for image {IMAGE} but there is no `docker` command"):
        logic.run(c["model"], c["evaluation"], str(c["out"]), destination=c["dest"], model_name="au",
                  infra_image=IMAGE)
    assert registry.list_versions(os.path.join(c["dest"], "au")) == [] and not c["out"].exists()


def test_the_cli_passes_the_image_and_refuses_with_status_2(monkeypatch, tmp_path, capsys):
    _docker(monkeypatch, "/usr/bin/docker", {"version": _done(1, "", "permission denied")})
    c = _candidate(tmp_path)
    code = main(["--model", c["model"], "--evaluation", c["evaluation"], "--destination", c["dest"],
                 "--output", str(c["out"]), "--infra-image", IMAGE])
    assert code == 2
    assert "docker cannot reach its daemon (permission denied); run without --infra-image" in capsys.readouterr().err
    assert not c["out"].exists()


def test_an_unblessed_model_needs_no_docker(monkeypatch, tmp_path):
    _docker(monkeypatch, None, {})
    c = _candidate(tmp_path)
    c["evaluation"] = tiny.make_evaluation(str(tmp_path / "unblessed"), False)
    record = logic.run(c["model"], c["evaluation"], str(c["out"]), destination=c["dest"], model_name="au",
                       infra_image=IMAGE)
    assert not record["pushed"] and "infra_validation" not in record
    assert json.loads((c["out"] / registry.PUSH_FILE).read_text())["blessed"] is False
