"""Fixtures of the container tests: a Docker daemon (else every test here is skipped, saying how to run them), the
two images built from this checkout (built here when missing or stale), and `docker run` as a user runs it."""
from __future__ import annotations

import fcntl
import os
import subprocess
import tempfile
import uuid

import pytest

from pipeline import containers, defaults

HOW = ("these tests build the images and run every step in them; they need a Docker daemon: on Debian as root, "
       "apt-get install docker.io mmdebstrap, then dockerd --bridge=none --iptables=false & (as .ci/run does), "
       "and make test again")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    ours = [item for item in items if str(item.fspath).startswith(here)]
    if not ours:
        return
    try:
        containers.check_docker()
    except containers.ContainerError as e:
        skip = pytest.mark.skip(reason=f"{e}. {HOW}")
        for item in ours:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> dict[str, str]:
    """kind -> tag of the images built from this checkout: the ones `make images` left when current, else built now
    (the layers of the lock are cached, so a code change rebuilds in about a minute)."""
    tags = {"cpu": defaults.LOCAL_IMAGE_CPU, "gpu": defaults.LOCAL_IMAGE_GPU}
    # `make test` runs test files in two processes: the one that finds the images stale builds them, the other
    # waits for it and then finds them current.
    with open(os.path.join(tempfile.gettempdir(), "emotionet-au-images.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stale = {}
        for kind, tag in tags.items():
            try:
                if containers.check_image(tag, kind):
                    stale[kind] = tag  # built from other sources
            except containers.ContainerError:
                stale[kind] = tag
        if stale:
            containers.build_images(stale, os.environ, str(tmp_path_factory.mktemp("image-logs")))
    for kind, tag in tags.items():
        assert not containers.check_image(tag, kind), f"{tag} is still not built from this checkout"
    return tags


@pytest.fixture(scope="session")
def user() -> tuple[int, int]:
    """The uid:gid the containers run as: this user's, or a plain user's when the tests run as root, so that the
    images are shown to work for someone who is not root and the files come out theirs."""
    return (os.getuid(), os.getgid()) if os.getuid() != 0 else (1000, 1000)


def hand_over(folder: str, user: tuple[int, int]) -> None:
    """When the tests run as root, makes everything under folder the containers' user's (pytest's temporary folders
    are 0700 root's: a plain user could neither read a model there nor write an output)."""
    if os.getuid() != 0:
        return
    os.chown(folder, *user)
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), *user, follow_symlinks=False)


@pytest.fixture(scope="session")
def pushed_model(tmp_path_factory, user) -> dict:
    """A tiny model pushed on the host, as a person pushes one and then serves or annotates with it in an image:
    {"registry", "model_root" (<registry>/au, follows LATEST), "version"}. tests/data/evaluate/tiny_model.py's model
    (AU j follows colour channel j of the face crop) takes a second to make, where training one in an image takes
    minutes."""
    import tiny_model as tiny  # tests/conftest.py puts tests/data/evaluate on the path

    from components.common.faces import FaceSettings
    from components.push import logic as push_logic

    root = tmp_path_factory.mktemp("pushed")
    model = tiny.make_model(str(root / "model"), tiny.GOOD, faces=FaceSettings().to_dict())
    evaluation = tiny.make_evaluation(str(root / "evaluation"), True)
    registry = str(root / "registry")
    record = push_logic.run(model, evaluation, None, destination=registry, model_name="au", infra_validate=False)
    hand_over(registry, user)
    return {"registry": registry, "model_root": os.path.join(registry, "au"), "version": record["version"]}


def docker_command(image: str, args: list[str], mounts: list[str], user: tuple[int, int], network: str,
                   name: str) -> list[str]:
    """`docker run --rm --name NAME --network NETWORK -u UID:GID -e HOME=/tmp -v PATH:PATH ... IMAGE ARGS`, as README
    shows it."""
    command = ["docker", "run", "--rm", "--name", name, "--network", network, "-u", f"{user[0]}:{user[1]}",
               "-e", "HOME=/tmp"]
    for path in mounts:
        command += ["-v", f"{path}:{path}"]
    return [*command, image, *args]


def docker_run(image: str, args: list[str], mounts: list[str], user: tuple[int, int], network: str = "none",
               timeout: float = 900) -> subprocess.CompletedProcess:
    """docker_command's container, run to its end; its output captured."""
    name = f"au-test-{uuid.uuid4().hex[:12]}"
    try:
        return subprocess.run(docker_command(image, args, mounts, user, network, name), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        # killing the client leaves the container running: stop it too
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, timeout=60)
        raise
