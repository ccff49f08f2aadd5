"""Infra validation (TFX's InfraValidator): the candidate, started in the serving code in a fresh process (here, or
in a Docker image), must load and answer evaluate's canonical requests as the shared scorer did before push may move
LATEST."""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

from components.common import evaluation, processes, registry, storage

READY_TIMEOUT_S = 120.0  # loading TensorFlow, the model and the face detector; a cold CPU takes tens of seconds
REQUEST_TIMEOUT_S = 60.0
TOLERANCE = 1e-3  # on each probability (the server rounds to 4 digits)
ROUTE_HEALTH = "/health"
ROUTE_PREDICT = "/predict"
# What every prediction of the serving contract carries (components/serve/protocols.py, inference.Scorer).
RESULT_KEYS = ("image", "width", "height", "faces", "faces_found", "error", "reason", "model_version")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTAINER_MODEL_DIR = "/model"  # where the candidate is mounted, read-only, in the image's container
DOCKER_CHECK_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15  # SIGTERM, then SIGKILL: uvicorn shuts down gracefully within it


class InfraUnavailable(RuntimeError):
    """The image asked for cannot be run here (no docker, no daemon, no such image): no verdict on the candidate."""


def free_port() -> int:
    """A port nothing listens on at 127.0.0.1 (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_requests(evaluation_dir: str) -> tuple[list[dict], str]:
    """evaluate's canonical requests, or only the faceless picture (without expected answers) when it wrote none."""
    path = storage.join(evaluation_dir, evaluation.CANONICAL_REQUESTS_FILE)
    if storage.exists(path):
        try:
            doc = json.loads(storage.read_text(path))
            requests = list(doc["requests"])
            for r in requests:
                base64.b64decode(r["b64"], validate=True)
                if not isinstance(r["expected"], dict):
                    raise TypeError("expected is not an object")
            return requests, ""
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}); re-run evaluate") from e
    note = (f"{path} does not exist (an evaluation from before canonical requests): checked loading and the "
            "answer to a faceless picture only")
    return [{"key": evaluation.NO_FACE_KEY, "b64": base64.b64encode(evaluation.no_face_png()).decode(),
             "expected": None}], note


def _get(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _post(url: str, doc: dict, timeout: float) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def compare(request: dict, got: dict) -> list[str]:
    """What differs between one prediction and the contract's shape and evaluate's expected answer."""
    key = request["key"]
    if not isinstance(got, dict):
        return [f"{key}: the answer is a {type(got).__name__}, not an object"]
    missing = [k for k in RESULT_KEYS if k not in got]
    if missing:
        return [f"{key}: the answer has no {', '.join(missing)}"]
    if not isinstance(got["faces"], list) or not all(isinstance(f, dict) for f in got["faces"]):
        return [f"{key}: faces is not a list of objects"]
    want = request.get("expected")
    if want is None:  # no expected answer: the shape and a successful answer are all that is checked
        return [f"{key}: the server could not score it ({got['error']})"] if got["error"] else []
    problems = []
    for k in ("error", "reason"):
        if (got[k] is None) != (want.get(k) is None) or (k == "reason" and got[k] != want.get(k)):
            problems.append(f"{key}: {k} is {got[k]!r}, evaluate's scorer said {want.get(k)!r}")
    if len(got["faces"]) != len(want.get("faces") or []):
        return problems + [f"{key}: {len(got['faces'])} faces, evaluate's scorer found {len(want.get('faces') or [])}"]
    for i, (g, w) in enumerate(zip(got["faces"], want["faces"])):
        for name in ("probabilities", "valence", "arousal"):
            wv, gv = w.get(name), g.get(name)
            if wv is None:
                continue
            if isinstance(wv, dict):
                if not isinstance(gv, dict) or set(gv) != set(wv):
                    problems.append(f"{key} face {i}: {name} has keys {sorted(gv or {})}, expected {sorted(wv)}")
                    continue
                worst = max((abs(float(gv[a]) - float(wv[a])), a) for a in wv) if wv else (0.0, "")
                if worst[0] > TOLERANCE:
                    problems.append(f"{key} face {i}: {worst[1]} is {gv[worst[1]]}, evaluate's scorer said "
                                    f"{wv[worst[1]]} (more than {TOLERANCE} apart)")
            elif not isinstance(gv, (int, float)) or abs(float(gv) - float(wv)) > TOLERANCE:
                problems.append(f"{key} face {i}: {name} is {gv!r}, evaluate's scorer said {wv}")
    return problems


def _tail(log_path: str, lines: int = 5) -> str:
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            text = [line.rstrip() for line in f if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def serve_args(model_dir: str, port: int, max_instances: int) -> list[str]:
    """The server's arguments: loopback, the given port, no polling for newer versions (the candidate is fixed)."""
    return ["--model", model_dir, "--host", "127.0.0.1", "--port", str(port), "--poll-s", "0",
            "--max-instances", str(max_instances)]


def docker_command(image: str, model_dir: str, port: int, max_instances: int, name: str,
                   user: tuple[int, int] | None = None) -> list[str]:
    """`docker run` of the server in `image`: the host's network (it listens on 127.0.0.1:port), this process's
    uid:gid (HOME=/tmp: the image's home is not theirs), the local model folder mounted read-only at /model, and
    --init (PID 1 ignores a SIGTERM it has no handler for: a server still loading would wait for SIGKILL)."""
    uid, gid = user or (os.getuid(), os.getgid())
    return ["docker", "run", "--rm", "--init", "--name", name, "--network", "host", "--user", f"{uid}:{gid}",
            "-e", "HOME=/tmp", "-v", f"{os.path.realpath(model_dir)}:{CONTAINER_MODEL_DIR}:ro", image,
            "python", "-m", "components.serve", *serve_args(CONTAINER_MODEL_DIR, port, max_instances)]


def check_docker(image: str) -> None:
    """Raises InfraUnavailable, saying what to do, unless docker runs and the daemon holds `image` (no pull: one
    would eat the readiness bound, and offline it fails)."""
    asked = f"infra validation asked for image {image} but"
    how = "; run without --infra-image or start Docker"
    if shutil.which("docker") is None:
        raise InfraUnavailable(f"{asked} there is no `docker` command on this machine{how}")
    try:
        done = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                              text=True, timeout=DOCKER_CHECK_TIMEOUT_S)
        if done.returncode != 0 or not done.stdout.strip():
            said = (done.stderr.strip().splitlines() or ["`docker version` failed"])[-1]
            raise InfraUnavailable(f"{asked} docker cannot reach its daemon ({said}){how}")
        done = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True,
                              text=True, timeout=DOCKER_CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        late = f"the Docker daemon did not answer in {DOCKER_CHECK_TIMEOUT_S:.0f} s"
        raise InfraUnavailable(f"{asked} {late}{how}") from None
    if done.returncode != 0:
        raise InfraUnavailable(f"{asked} the Docker daemon has no such image: build it (`make images`) or "
                               "`docker pull` it, or run without --infra-image")


def _remove_container(name: str, stop: bool = True) -> None:
    """docker stop (SIGTERM, SIGKILL after STOP_TIMEOUT_S), then rm: killing `docker run` would leave it running."""
    for args in ([["stop", "--time", str(STOP_TIMEOUT_S), name]] if stop else []) + [["rm", "--force", name]]:
        try:
            subprocess.run(["docker", *args], capture_output=True, timeout=STOP_TIMEOUT_S + 30)
        except (subprocess.TimeoutExpired, OSError):
            pass  # the next command, or --rm, still removes it


def _stop(proc: subprocess.Popen, container: str = "") -> None:
    if container:
        _remove_container(container)
    processes.stop(proc, STOP_TIMEOUT_S)
    if container:
        _remove_container(container, stop=False)  # one that `docker run` created only as it was stopped


def validate(model_dir: str, evaluation_dir: str, ready_timeout_s: float = READY_TIMEOUT_S, image: str = "") -> dict:
    """Starts `python -m components.serve --model model_dir` on a free 127.0.0.1 port (a subprocess here, or with
    `image` a `docker run` of that image, the model mounted at /model), waits for /health, sends the canonical
    requests to /predict, compares the answers, stops the server (and removes its container).

    Returns {"passed", "reason", "checked", "seconds", "port", "image", "command", "notes"}: reason says why it did
    not pass. Raises InfraUnavailable when `image` cannot be run here.
    """
    start = time.monotonic()
    result = {"passed": False, "reason": "", "checked": 0, "seconds": 0.0, "port": None, "image": image or None,
              "command": [], "notes": []}
    if image:
        check_docker(image)
    try:
        requests, note = read_requests(evaluation_dir)
    except ValueError as e:
        result.update(reason=str(e))
        return result
    if note:
        result["notes"].append(note)
    port = free_port()
    result["port"] = port
    base = f"http://127.0.0.1:{port}"
    max_instances = max(64, len(requests))
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for var in ("AIP_STORAGE_URI", "AIP_HTTP_PORT", "AIP_PREDICT_ROUTE", "AIP_HEALTH_ROUTE"):
        env.pop(var, None)  # the flags say it all: a Vertex AI environment must not move the check's port
    with tempfile.TemporaryDirectory(prefix="infra-") as tmp:
        container = ""
        if image:
            container = f"au-infra-{uuid.uuid4().hex[:12]}"
            # A container mounts local folders only: a gs:// candidate is copied here first.
            cmd = docker_command(image, registry.fetch_local(model_dir, tmp), port, max_instances, container)
        else:
            cmd = [sys.executable, "-m", "components.serve", *serve_args(model_dir, port, max_instances)]
        result["command"] = cmd
        log_path = os.path.join(tmp, "serve.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            result["reason"] = _check(proc, base, requests, ready_timeout_s, log_path, result)
        finally:
            _stop(proc, container)
    result["passed"] = not result["reason"]
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def _check(proc: subprocess.Popen, base: str, requests: list[dict], ready_timeout_s: float, log_path: str,
           result: dict) -> str:
    """"" when the server became ready and answered as expected, else why not."""
    deadline = time.monotonic() + ready_timeout_s
    while True:
        if proc.poll() is not None:
            return (f"the server exited with status {proc.returncode} before it was ready (it could not load the "
                    f"model): {_tail(log_path)}")
        try:
            if _get(base + ROUTE_HEALTH, timeout=2) == 200:
                break
        except (urllib.error.URLError, OSError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            return f"the server was not ready after {ready_timeout_s:.0f} s: {_tail(log_path)}"
        time.sleep(0.25)
    try:
        status, body = _post(base + ROUTE_PREDICT, {"instances": [{"b64": r["b64"]} for r in requests]},
                             REQUEST_TIMEOUT_S)
    except (urllib.error.URLError, OSError) as e:
        return f"POST {ROUTE_PREDICT} failed ({e}): {_tail(log_path)}"
    if status != 200:
        return f"POST {ROUTE_PREDICT} answered {status}: {body[:300].decode(errors='replace')}"
    try:
        predictions = json.loads(body)["predictions"]
    except (ValueError, KeyError, TypeError):
        return f"POST {ROUTE_PREDICT} answered 200 without a predictions list: {body[:300].decode(errors='replace')}"
    if not isinstance(predictions, list) or len(predictions) != len(requests):
        return f"{len(requests)} images sent, {len(predictions) if isinstance(predictions, list) else 0} predictions"
    problems = [p for r, got in zip(requests, predictions) for p in compare(r, got)]
    result["checked"] = len(requests)
    if problems:
        return "the answers differ from evaluate's: " + "; ".join(problems[:3])
    return ""
