"""pipeline/containers.py without a Docker daemon: build secrets, what a container run mounts and lets out, and the
messages for a missing daemon or a missing or stale image (a real `docker` command line:
tests/integration/test_containers_cli.py)."""
import subprocess

import pytest

from pipeline import containers, defaults


def test_build_secrets_carry_the_ca_bundle_and_network_index_settings_only(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("CERT")
    flags = containers.build_secrets({"PIP_CERT": str(ca), "PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple https://mirror.example/simple",
                                      "PIP_DEFAULT_TIMEOUT": "180", "HOME": "/root"}, str(tmp_path))
    assert flags == ["--secret", f"id=ca.crt,src={ca}", "--secret", f"id=pip.conf,src={tmp_path / 'pip.conf'}"]
    conf = (tmp_path / "pip.conf").read_text().splitlines()
    assert conf == ["[global]", "cert = /run/secrets/ca.crt", "extra-index-url = https://mirror.example/simple", "timeout = 180"]


def test_a_machine_without_a_ca_bundle_passes_only_the_pip_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(containers.os.path, "isfile", lambda p: False)
    flags = containers.build_secrets({}, str(tmp_path))
    assert flags == ["--secret", f"id=pip.conf,src={tmp_path / 'pip.conf'}"]
    assert (tmp_path / "pip.conf").read_text() == "[global]\n"


def test_container_settings_mount_every_local_folder_a_step_uses_and_let_only_download_out(tmp_path):
    run_dir = tmp_path / "runs" / "r1"
    sheet = tmp_path / "data" / "sheet.xlsx"
    sheet.parent.mkdir(parents=True)
    sheet.write_text("x")
    arguments = {"source": str(sheet), "registry": str(tmp_path / "runs" / "registry"),
                 "download_store": str(run_dir / "store"), "schema_uri": str(tmp_path / "schema" / "schema.pbtxt"),
                 "epochs": 1}
    s = containers.container_settings(arguments, str(run_dir), 1234, 99, {"TF_CPP_MIN_LOG_LEVEL": "2", "SECRET": "x"})
    assert s.mounts == {str(run_dir): "rw", str(tmp_path / "data"): "ro", str(tmp_path / "runs" / "registry"): "rw",
                        str(tmp_path / "schema"): "rw"}  # the store is inside the run folder: mounted with it
    assert (tmp_path / "runs" / "registry").is_dir() and (tmp_path / "schema").is_dir()
    assert s.network_steps == ("download",) and s.user == "1234:99"
    assert s.environment == {"TF_CPP_MIN_LOG_LEVEL": "2", "HOME": "/tmp"}  # nothing else of this process's environment
    assert s.record_path == str(run_dir / containers.CONTAINERS_FILE)


def test_a_gs_parameter_lets_every_step_reach_the_network_and_root_keeps_its_home(tmp_path):
    from pipeline.dag import STEPS

    s = containers.container_settings({"source": "gs://b/sheet.xlsx", "registry": "gs://b/registry"}, str(tmp_path), 0, 0, {})
    assert s.network_steps == tuple(STEPS) and s.mounts == {str(tmp_path): "rw"} and "HOME" not in s.environment


class FakeDocker:
    """Stands in for containers._docker: answers `version` and `image inspect` as a daemon would."""

    def __init__(self, labels=None, daemon=True):
        self.labels, self.daemon = labels, daemon

    def __call__(self, *args, timeout=60, check=False):
        if not self.daemon:
            return subprocess.CompletedProcess(args, 1, "", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock.")
        if args[0] == "version":
            return subprocess.CompletedProcess(args, 0, "20.10.24\n", "")
        if args[:2] == ("image", "inspect"):
            if self.labels is None:
                return subprocess.CompletedProcess(args, 1, "", "Error: No such image")
            import json

            return subprocess.CompletedProcess(args, 0, json.dumps(self.labels), "")
        raise AssertionError(args)


def test_no_daemon_says_how_to_start_one(monkeypatch):
    monkeypatch.setattr(containers, "_docker", FakeDocker(daemon=False))
    with pytest.raises(containers.ContainerError, match=r"no Docker daemon answers \(Cannot connect.*dockerd --bridge=none"):
        containers.check_docker()


def test_a_missing_image_names_the_command_that_builds_it(monkeypatch):
    monkeypatch.setattr(containers, "_docker", FakeDocker(labels=None))
    with pytest.raises(containers.ContainerError, match=r"no image me/cpu:1 \(cpu\) on this machine: build it with `make images`"):
        containers.check_image("me/cpu:1", "cpu")


def test_an_image_of_another_lock_is_refused_and_one_of_other_sources_warned(monkeypatch):
    monkeypatch.setattr(containers, "_docker", FakeDocker(labels={containers.LABEL_LOCK: "0" * 64}))
    with pytest.raises(containers.ContainerError, match=r"built from another requirements.lock \(sha256 000000000000...\).*rebuild it with `make images`"):
        containers.check_image("me/gpu:1", "gpu")
    monkeypatch.setattr(containers, "_docker", FakeDocker(labels={containers.LABEL_LOCK: containers.lock_digest(),
                                                                  containers.LABEL_SOURCE: "1" * 64}))
    (warning,) = containers.check_image("me/gpu:1", "gpu")
    assert "built from other sources than this checkout's" in warning
    monkeypatch.setattr(containers, "_docker", FakeDocker(labels={containers.LABEL_LOCK: containers.lock_digest(),
                                                                  containers.LABEL_SOURCE: containers.source_digest()}))
    assert containers.check_image("me/gpu:1", "gpu") == []


def test_the_source_digest_follows_the_code_the_images_copy(tmp_path):
    for name in ("requirements.lock", "setup.py", "docker/image_lock.py", "pipeline/a.py", "components/b/c.py",
                 "tests/t.py", "components/__pycache__/c.cpython-311.pyc"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    before = containers.source_digest(tmp_path)
    (tmp_path / "tests/t.py").write_text("changed")
    (tmp_path / "components/__pycache__/c.cpython-311.pyc").write_text("changed")
    assert containers.source_digest(tmp_path) == before
    (tmp_path / "components/b/c.py").write_text("changed")
    assert containers.source_digest(tmp_path) != before
    lock = containers.lock_digest(tmp_path)
    (tmp_path / "requirements.lock").write_text("changed")
    assert containers.lock_digest(tmp_path) != lock


def test_the_local_image_tags_are_what_make_images_builds():
    assert defaults.LOCAL_IMAGE_CPU.endswith(":local") and defaults.LOCAL_IMAGE_GPU.endswith(":local")
    assert containers.DOCKERFILES == {"cpu": "docker/Dockerfile.cpu", "gpu": "docker/Dockerfile.gpu"}


def test_a_base_that_is_neither_here_nor_pullable_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(containers, "_docker", FakeDocker(labels=None))
    monkeypatch.setattr(containers, "_pullable", lambda image, timeout: False)
    with pytest.raises(containers.ContainerError, match="the base image me/base:1 is neither on this machine nor can it be pulled"):
        containers.build_images({"cpu": "me/cpu:1"}, {}, str(tmp_path), base="me/base:1")
