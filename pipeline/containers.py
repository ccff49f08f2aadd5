"""The project's two container images: build them (on a stand-in base where the public bases can't be pulled), tell
whether one is there and current, and run the DAG's tasks in them with kfp.local's DockerRunner as a cluster would."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

from pipeline import defaults

DOCKERFILES = {"cpu": "docker/Dockerfile.cpu", "gpu": "docker/Dockerfile.gpu"}
# What the Dockerfiles copy into the images: the source digest covers exactly these.
IMAGE_SOURCES = ("requirements.lock", "setup.py", "docker/image_lock.py", "pipeline", "components")
# Image labels that say what an image was built from.
LABEL_LOCK = "org.emotionet-au.lock-sha256"
LABEL_SOURCE = "org.emotionet-au.source-sha256"
LABEL_BASE = "org.emotionet-au.base-image"
# Where each task's container, command and settings are written in a container run, for a person and for the test
# that compares them with the compiled spec.
CONTAINERS_FILE = "containers.json"
_BASE_ARG = re.compile(r"^ARG\s+BASE_IMAGE=(\S+)", re.M)


class ContainerError(RuntimeError):
    """Docker is missing or stopped, or an image is missing, stale or can't be built: the message says what to do."""


def _digest(paths: Iterable[Path], root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def lock_digest(root: Path = defaults.REPO_ROOT) -> str:
    """sha256 of requirements.lock: an image labelled with another was built from another environment."""
    return _digest([root / "requirements.lock"], root)


def source_digest(root: Path = defaults.REPO_ROOT) -> str:
    """sha256 of every file the images copy (the lock, setup.py and the Python sources of pipeline/ and components/)."""
    files = []
    for name in IMAGE_SOURCES:
        p = root / name
        files.extend(sorted(q for q in p.rglob("*.py") if "__pycache__" not in q.parts) if p.is_dir() else [p])
    return _digest(files, root)


def public_base(kind: str, root: Path = defaults.REPO_ROOT) -> str:
    """The base image a Dockerfile names by default (its `ARG BASE_IMAGE=`)."""
    m = _BASE_ARG.search((root / DOCKERFILES[kind]).read_text())
    if not m:
        raise ContainerError(f"{DOCKERFILES[kind]} has no `ARG BASE_IMAGE=` default")
    return m.group(1)


def _docker(*args: str, timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ContainerError("no `docker` command: install Docker (Debian: apt-get install docker.io) and start it")
    if check and done.returncode != 0:
        raise ContainerError(f"docker {' '.join(args[:3])} failed: {done.stderr.strip()[-500:]}")
    return done


def check_docker() -> None:
    """Raises ContainerError, saying how to start one, when no Docker daemon answers."""
    done = _docker("version", "--format", "{{.Server.Version}}", timeout=30)
    if done.returncode != 0 or not done.stdout.strip():
        raise ContainerError(
            "no Docker daemon answers (" + (done.stderr.strip().splitlines() or ["docker version failed"])[-1] + "); "
            "start it, e.g. `dockerd --bridge=none --iptables=false &` as root on a machine without a bridge network, "
            "or `systemctl start docker`")


def image_labels(tag: str) -> dict | None:
    """The labels of a local image, or None when there is no such image."""
    done = _docker("image", "inspect", "--format", "{{json .Config.Labels}}", tag)
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip() or "null") or {}


def check_image(tag: str, kind: str, root: Path = defaults.REPO_ROOT) -> list[str]:
    """Raises ContainerError when the image is missing or was built from another requirements.lock; returns warnings
    (built from other sources) for the console."""
    rebuild = f"`make images` (or `python pipeline.py images --only {kind} --tag-{kind} {tag}`)"
    labels = image_labels(tag)
    if labels is None:
        raise ContainerError(f"no image {tag} ({kind}) on this machine: build it with {rebuild}")
    built_from = labels.get(LABEL_LOCK)
    if built_from != lock_digest(root):
        raise ContainerError(
            f"image {tag} ({kind}) was built from "
            + (f"another requirements.lock (sha256 {built_from[:12]}...)" if built_from else "an unknown requirements.lock")
            + f" than this checkout's (sha256 {lock_digest(root)[:12]}...): rebuild it with {rebuild}")
    if labels.get(LABEL_SOURCE) != source_digest(root):
        return [f"image {tag} ({kind}) was built from other sources than this checkout's: its steps run the code "
                f"they were built with; {rebuild} takes this checkout's (about a minute)"]
    return []


def buildkit_command() -> list[str]:
    """A `docker build` that uses BuildKit (build secrets need it): buildx where installed, else a client older than
    23 with DOCKER_BUILDKIT=1 (Debian's docker.io ships one as /usr/bin/docker)."""
    if _docker("buildx", "version", timeout=30).returncode == 0:
        return ["docker", "buildx", "build", "--load"]
    for client in dict.fromkeys([shutil.which("docker") or "docker", "/usr/bin/docker"]):
        try:
            done = subprocess.run([client, "version", "--format", "{{.Client.Version}}"], capture_output=True,
                                  text=True, timeout=30)
        except OSError:
            continue
        major = re.match(r"(\d+)\.", done.stdout.strip())
        if major and int(major.group(1)) < 23:
            return ["env", "DOCKER_BUILDKIT=1", client, "build"]
    raise ContainerError("building the images needs BuildKit: install Docker's buildx plugin "
                         "(Debian trixie: apt-get install docker-buildx; docker.com's docker-buildx-plugin), "
                         "or Debian bookworm's docker.io, whose docker client builds with DOCKER_BUILDKIT=1")


def _pullable(image: str, timeout: float) -> bool:
    if _docker("image", "inspect", image).returncode == 0:
        return True
    try:
        return _docker("pull", image, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def make_standin_base(tag: str = defaults.STANDIN_BASE_IMAGE, say: Callable[[str], None] = print) -> str:
    """A Debian bookworm image with Python 3.11, pip and venv (what python:3.11-slim-bookworm gives), made with
    mmdebstrap from Debian's packages and imported; kept under `tag` and reused."""
    if _docker("image", "inspect", tag).returncode == 0:
        return tag
    if shutil.which("mmdebstrap") is None:
        raise ContainerError("the public base images can't be pulled here and there is no mmdebstrap to make a "
                             "stand-in from Debian: apt-get install mmdebstrap, or pull the bases "
                             f"({public_base('cpu')}, {public_base('gpu')}) and retry")
    say(f"making the stand-in base {tag}: Debian {defaults.STANDIN_DEBIAN_SUITE} minbase with "
        f"{', '.join(defaults.STANDIN_PACKAGES)} (mmdebstrap, about 30 s)")
    with tempfile.TemporaryDirectory() as tmp:
        tar = os.path.join(tmp, "base.tar")
        done = subprocess.run(["mmdebstrap", "--variant=minbase", "--include=" + ",".join(defaults.STANDIN_PACKAGES),
                               defaults.STANDIN_DEBIAN_SUITE, tar], capture_output=True, text=True)
        if done.returncode != 0:
            raise ContainerError(f"mmdebstrap could not make the stand-in base: {done.stderr.strip()[-800:]}")
        _docker("import", "-c", "ENV LANG=C.UTF-8", "-c", 'CMD ["python3"]', tar, tag, timeout=600, check=True)
    return tag


def build_secrets(environ: Mapping[str, str], folder: str) -> list[str]:
    """`--secret` flags giving the build this machine's CA bundle and package index settings for its one pip command
    (Dockerfile.*: RUN --mount=type=secret): they reach no layer of the image."""
    ca = next((environ[k] for k in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE") if os.path.isfile(environ.get(k, ""))),
              "/etc/ssl/certs/ca-certificates.crt")
    lines = ["[global]"]
    flags = []
    if os.path.isfile(ca):
        flags += ["--secret", f"id=ca.crt,src={ca}"]
        lines.append("cert = /run/secrets/ca.crt")
    # Only the index settings that reach over the network mean anything inside the build (not file:// indexes).
    for key, name in (("PIP_INDEX_URL", "index-url"), ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
                      ("PIP_TRUSTED_HOST", "trusted-host"), ("PIP_DEFAULT_TIMEOUT", "timeout")):
        values = [v for v in environ.get(key, "").split() if not v.startswith("file:")]
        if values:
            lines.append(f"{name} = {' '.join(values)}")
    conf = os.path.join(folder, "pip.conf")
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    return flags + ["--secret", f"id=pip.conf,src={conf}"]


@dataclasses.dataclass
class BuiltImage:
    kind: str
    tag: str
    base: str
    standin: bool
    seconds: float
    log: str


def build_image(kind: str, tag: str, base: str, environ: Mapping[str, str], log_path: str,
                root: Path = defaults.REPO_ROOT, say: Callable[[str], None] = print) -> float:
    """Builds one image (docker/Dockerfile.KIND on `base`), labelled with the lock and source digests; returns its
    build time. The full build output goes to log_path."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [*buildkit_command(), "--progress", "plain", "--network", "host", "-f", DOCKERFILES[kind],
                   "--build-arg", f"BASE_IMAGE={base}", "--label", f"{LABEL_LOCK}={lock_digest(root)}",
                   "--label", f"{LABEL_SOURCE}={source_digest(root)}", "--label", f"{LABEL_BASE}={base}",
                   *build_secrets(environ, tmp), "-t", tag, "."]
        say(f"building {tag} ({kind}) on {base}; log: {log_path}")
        start = time.monotonic()
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        with open(log_path, "w") as log:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            code = subprocess.run(command, cwd=root, stdout=log, stderr=subprocess.STDOUT).returncode
        seconds = time.monotonic() - start
    if code != 0:
        with open(log_path) as f:
            tail = [line.rstrip() for line in f if line.strip()][-25:]
        raise ContainerError(f"building {tag} failed (exit {code}); the end of {log_path}:\n  " + "\n  ".join(tail))
    return seconds


def build_images(tags: Mapping[str, str], environ: Mapping[str, str], log_dir: str, base: str | None = None,
                 pull_timeout: float = 120, root: Path = defaults.REPO_ROOT,
                 say: Callable[[str], None] = print) -> list[BuiltImage]:
    """Builds the images of `tags` (kind -> tag). Each goes on its Dockerfile's public base when that is here or can be
    pulled, else on the stand-in base (said on the console); `base` forces one for all."""
    check_docker()
    if base is not None and not _pullable(base, pull_timeout):
        raise ContainerError(f"the base image {base} is neither on this machine nor can it be pulled: pull or build "
                             "it first, or leave --base out to use the Dockerfiles' bases (or the stand-in)")
    built = []
    for kind, tag in tags.items():
        chosen, standin = base, False
        if chosen is None:
            public = public_base(kind, root)
            if _pullable(public, pull_timeout):
                chosen = public
            else:
                say(f"the public base {public} can't be pulled here: building {kind} on a stand-in from Debian "
                    f"with Python 3.11" + (" (no CUDA: the GPU image proves everything but CUDA, and runs on the CPU)"
                                           if kind == "gpu" else ""))
                chosen, standin = make_standin_base(say=say), True
        seconds = build_image(kind, tag, chosen, environ, os.path.join(log_dir, f"build-{kind}.log"), root, say)
        built.append(BuiltImage(kind, tag, chosen, standin, seconds, os.path.join(log_dir, f"build-{kind}.log")))
        say(f"built {tag} in {seconds:.0f}s ({image_size(tag) / 1e9:.2f} GB)")
    # A rebuild leaves the image it replaced untagged: drop those of this project's (its label), no one else's.
    _docker("image", "prune", "--force", "--filter", f"label={LABEL_LOCK}", timeout=300)
    return built


def remove_image(tag: str) -> None:
    """Removes a local image tag (nothing when there is none)."""
    _docker("image", "rm", "--force", tag)


def image_size(tag: str) -> int:
    """Bytes of a local image, as `docker image ls` counts them."""
    done = _docker("image", "inspect", "--format", "{{.Size}}", tag, check=True)
    return int(done.stdout.strip())


# --- running the DAG's tasks in containers --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ContainerRun:
    """A local run whose tasks run in containers: the two images, and whom the containers run as."""

    image_cpu: str
    image_gpu: str
    uid: int
    gid: int
    environ: Mapping[str, str]


@dataclasses.dataclass
class ContainerSettings:
    """How the tasks of a local container run are started: what is mounted, which steps get the network, as whom."""

    mounts: dict[str, str]  # host path -> "rw" or "ro", each mounted at the same path
    network_steps: tuple[str, ...]  # these get --network host; the others --network none
    user: str  # uid:gid the containers run as, so what they write is the user's own
    environment: dict[str, str]
    record_path: str  # containers.json


def container_settings(arguments: Mapping, run_dir: str, uid: int, gid: int,
                       environ: Mapping[str, str]) -> ContainerSettings:
    """The mounts, network and user of a container run of the DAG with these pipeline arguments.

    The pipeline root is mounted as kfp.local mounts it (same path inside); so is every local folder a step reads or
    writes outside it: the sheet's folder (read-only), the download store, the schema's folder, the registry and the
    checkpoint folder. Download reaches the network (host network: the demo server is on loopback); the other steps
    run with none, unless a parameter is a gs:// URI.
    """
    mounts = {os.path.abspath(run_dir): "rw"}
    for name, mode in (("source", "ro"), ("download_store", "rw"), ("schema_uri", "rw"), ("registry", "rw"),
                       ("checkpoint_dir", "rw")):
        value = str(arguments.get(name) or "")
        if not value or "://" in value:
            continue
        path = os.path.abspath(value)
        folder = path if (os.path.isdir(path) or not os.path.splitext(path)[1]) else os.path.dirname(path)
        if mode == "rw":
            os.makedirs(folder, exist_ok=True)
        if not any(folder == m or folder.startswith(m.rstrip("/") + "/") for m in mounts):
            mounts[folder] = mode
    remote = any("://" in str(v) for v in arguments.values() if isinstance(v, str))
    from pipeline.dag import STEPS

    network = tuple(STEPS) if remote else tuple(defaults.CONTAINER_NETWORK_STEPS)
    env = {k: environ[k] for k in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS") if k in environ}
    if uid != 0:
        env["HOME"] = "/tmp"  # Keras, Matplotlib and pip write caches under HOME; the image's /root is not theirs
    return ContainerSettings(mounts=mounts, network_steps=network, user=f"{uid}:{gid}", environment=env,
                             record_path=os.path.join(run_dir, CONTAINERS_FILE))


@contextlib.contextmanager
def run_tasks_in_containers(settings: ContainerSettings, current_step: Callable[[], str],
                            write_line: Callable[[str], None]):
    """Makes kfp.local's DockerRunner start each task with `settings` (kfp 2.13's mounts only the pipeline root, gives
    no network choice, runs as root and leaves the container behind), its output to write_line, and records each
    task's image, command and settings in settings.record_path."""
    from kfp.local import docker_task_handler, status

    original = docker_task_handler.DockerTaskHandler
    records: dict[str, dict] = {}

    class Handler(original):
        def run(self) -> status.Status:
            step = current_step()
            record = {"image": self.image, "command": list(self.full_command),
                      "network": "host" if step in settings.network_steps else "none", "user": settings.user,
                      "mounts": dict(settings.mounts)}
            records[step] = record
            with open(settings.record_path, "w") as f:
                json.dump(records, f, indent=2)
            code = run_container(self.image, self.full_command, settings, record["network"], write_line)
            record["exit_code"] = code
            with open(settings.record_path, "w") as f:
                json.dump(records, f, indent=2)
            return status.Status.SUCCESS if code == 0 else status.Status.FAILURE

    docker_task_handler.DockerTaskHandler = Handler
    try:
        yield records
    finally:
        docker_task_handler.DockerTaskHandler = original


def run_container(image: str, command: list[str], settings: ContainerSettings, network: str,
                  write_line: Callable[[str], None]) -> int:
    """Runs one task's container to the end, its output to write_line; returns its exit code. The container is
    removed afterwards."""
    import docker

    client = docker.from_env()
    container = None
    try:
        container = client.containers.run(
            image=image, command=command, detach=True, stdout=True, stderr=True, network_mode=network,
            user=settings.user, environment=settings.environment,
            volumes={path: {"bind": path, "mode": mode} for path, mode in settings.mounts.items()})
        pending = ""
        for chunk in container.logs(stream=True, follow=True):
            pending += chunk.decode(errors="replace")
            *lines, pending = pending.split("\n")
            for line in lines:
                write_line(line + "\n")
        if pending:
            write_line(pending + "\n")
        return int(container.wait()["StatusCode"])
    except docker.errors.ImageNotFound:
        write_line(f"no image {image}: build it with `make images`\n")
        return 125
    except docker.errors.APIError as e:
        write_line(f"docker could not start {image}: {e.explanation or e}\n")
        return 125
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                container.remove(force=True)
        client.close()
