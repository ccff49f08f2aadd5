"""The model server as a subprocess on 127.0.0.1: its protocols, readiness, limits, and the swap to a new LATEST.

The model is tiny_model's (AU j follows colour channel j of the face crop), trained "on face crops": the server finds
faces with the real detector, so a photo's face box comes back, and a flat colour has no face.
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

import face_media as media  # tests/conftest.py puts tests/data/evaluate on the path
import tiny_model as tiny

from components.common import processes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READY_S = 300  # TensorFlow and MediaPipe load in tens of seconds on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _push(model_dir: str, evaluation_dir: str, destination: str) -> dict:
    from components.push import logic as push_logic

    return push_logic.run(model_dir, evaluation_dir, None, destination=destination, model_name="au", force=True,
                          infra_validate=False)


class ServerProcess:
    """`python -m components.serve ...` on a free port; its log kept for the assertion messages."""

    def __init__(self, tmp, *flags: str):
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(tmp, f"serve-{self.port}.log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIP_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "components.serve", "--port", str(self.port), *flags],
                                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        self.client = httpx.Client(base_url=self.url, timeout=120)
        self.startup_statuses: list[int] = []

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited ({self.proc.returncode}):\n{self.log()}"
            try:
                status = self.client.get("/health").status_code
            except httpx.TransportError:
                status = None  # not listening yet
            if status is not None and (not self.startup_statuses or self.startup_statuses[-1] != status):
                self.startup_statuses.append(status)
            if status == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"the server was not ready after {READY_S} s:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM, as a cluster stops a container: uvicorn finishes what is in flight, then ends by that signal."""
        self.client.close()
        return processes.stop(self.proc, 30)


def _jpeg_of(img) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90)
    return out.getvalue()


def _scene() -> bytes:
    """A 640x480 picture with one face (matplotlib's photo of Grace Hopper) on a flat red ground."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(io.BytesIO(f.read())).convert("RGB")
    scene = Image.new("RGB", (640, 480), (200, 40, 40))
    scene.paste(photo.resize((220, 260)), (360, 150))
    return _jpeg_of(scene)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from components.common.faces import FaceSettings

    root = tmp_path_factory.mktemp("serve")
    faces = FaceSettings().to_dict()
    good = tiny.make_model(str(root / "good"), tiny.GOOD, faces=faces)
    poor = tiny.make_model(str(root / "poor"), tiny.POOR, faces=faces)
    evaluation = tiny.make_evaluation(str(root / "evaluation"), True)
    first = _push(good, evaluation, str(root / "registry"))
    return {"root": root, "model_root": str(root / "registry" / "au"), "first": first, "poor": poor,
            "evaluation": evaluation, "scene": _scene(), "flat": tiny.jpeg((0, 0, 255), size=64)}


@pytest.fixture(scope="module")
def server(world):
    s = ServerProcess(str(world["root"]), "--model", world["model_root"], "--poll-s", "0.3", "--max-body-bytes",
                      "400000", "--max-pixels", "2000000")
    try:
        s.wait_ready()
        yield s
    finally:
        code = s.stop()
        assert code in (0, -signal.SIGTERM), f"the server did not stop cleanly ({code}):\n{s.log()}"
        assert "Application shutdown complete" in s.log()


def test_ready_only_once_the_model_is_loaded(server, world):
    # Listening before the model is loaded (health 503), then ready (200), never anything else.
    assert server.startup_statuses[-1] == 200 and set(server.startup_statuses) <= {503, 200}
    assert 503 in server.startup_statuses, f"never saw the server before it was ready: {server.startup_statuses}"
    health = server.client.get("/health").json()
    assert health == {"status": "ready", "model": "au", "version": world["first"]["version"]}
    assert "serving" in server.log() and "loaded and warmed" in server.log()


def test_the_three_protocols_find_the_face_and_name_the_version(server, world):
    c, version, scene = server.client, world["first"]["version"], world["scene"]

    vertex = c.post("/predict", json={"instances": [{"b64": media.b64(scene)}, {"b64": media.b64(world["flat"])}]})
    assert vertex.status_code == 200 and vertex.headers["x-model-version"] == version
    face_image, flat = vertex.json()["predictions"]
    assert face_image["model_version"] == version and face_image["error"] is None
    (face,) = face_image["faces"]
    x, y, w, h = face["box"]
    assert 340 < x < 460 and 130 < y < 260 and w > 60 and h > 60  # where the photo was pasted
    assert set(face["probabilities"]) == {"AU1", "AU2", "AU12"} and len(face["landmarks"]) == 6
    assert flat["faces"] == [] and flat["reason"] == "no_face" and flat["error"] is None

    v1 = c.post("/v1/models/au:predict", json={"instances": [{"b64": media.b64(scene)}]})
    assert v1.status_code == 200 and v1.json()["predictions"][0]["faces"][0]["probabilities"] == face["probabilities"]

    assert c.get("/v2/health/live").status_code == 200 and c.get("/v2/health/ready").json() == {"ready": True}
    assert c.get("/v2/models/au/ready").status_code == 200
    assert c.get("/v2/models/au").json()["versions"] == [version]
    raw = struct.pack("<I", len(scene)) + scene
    header = json.dumps({"id": "r1", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                 "parameters": {"binary_data_size": len(raw)}}]}).encode()
    v2 = c.post("/v2/models/au/infer", content=header + raw, headers={
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    out = v2.json()
    assert v2.status_code == 200 and out["model_version"] == version and out["id"] == "r1"
    assert json.loads(out["outputs"][0]["data"][0])["faces"][0]["probabilities"] == face["probabilities"]
    v2_json = c.post("/v2/models/au/infer", json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                                              "data": [media.b64(scene)]}]})
    assert v2_json.status_code == 200 and v2_json.json()["outputs"][0]["shape"] == [1]

    faces = c.post("/v1/faces", content=scene, headers={"Content-Type": "image/jpeg"})
    body = faces.json()
    assert faces.status_code == 200 and body["version"] == version and body["model_name"] == "au"
    assert body["au_ids"] == tiny.AU_IDS and body["images"][0]["faces"][0]["box"] == face["box"]

    card = c.get("/model-card")  # push writes one into the version
    assert card.status_code == 200 and card.headers["x-model-version"] == version
    assert card.json()["model"]["version"] == version
    markdown = c.get("/model-card.md")
    assert markdown.status_code == 200 and markdown.headers["content-type"].startswith("text/markdown")


def test_bad_requests_get_their_status_and_never_harm_the_server(server, world):
    c = server.client
    cases = [
        (c.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"}), 400,
         "not valid JSON"),
        (c.post("/predict", json={"images": []}), 400, 'no "instances"'),
        (c.post("/predict", json={"instances": [{"b64": "*not base64*"}]}), 400, "not valid base64"),
        (c.post("/predict", json={"instances": [{"b64": media.b64(b"just text")}]}), 400, "not an image"),
        (c.post("/predict", json={"instances": [{"b64": media.b64(media.png_header(50_000, 50_000))}]}), 413, "pixels"),
        (c.post("/predict", json={"instances": [{"b64": media.b64(tiny.jpeg((9, 9, 9), size=8))}]}), 422, "too small"),
        (c.post("/predict", content=b"x" * 500_000, headers={"Content-Type": "application/json"}), 413,
         "at most 400,000"),
        (c.post("/predict", content=b"a=1", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415,
         "application/json"),
        (c.post("/v1/faces", content=world["scene"], headers={"Content-Type": "application/octet-stream"}), 415,
         "image/jpeg"),
        (c.post("/v1/faces", content=world["scene"][:len(world["scene"]) // 2],
                headers={"Content-Type": "image/jpeg"}), 400, "damaged"),
        (c.post("/v2/models/other/infer", json={}), 404, "serves 'au'"),
        (c.post("/v2/models/au/infer", json={"inputs": [{"name": "image", "datatype": "FP32", "shape": [1],
                                                         "data": [0.5]}]}), 400, "expected BYTES"),
    ]
    for response, status, words in cases:
        assert response.status_code == status and words in response.json()["error"], (
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}")
    # A chunked body (no Content-Length) past the limit is cut off at the limit.
    chunked = c.post("/predict", content=iter([b"x" * 100_000] * 5), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert server.proc.poll() is None and c.get("/health").status_code == 200
    assert c.post("/predict", json={"instances": [{"b64": media.b64(world["scene"])}]}).status_code == 200


def test_a_push_is_served_without_losing_a_request_in_flight(server, world):
    """Clients keep sending while a new version is pushed: every request is answered, first by the old version,
    then by the new one, each answer naming the version that scored it."""
    first = world["first"]["version"]
    body = {"instances": [{"b64": media.b64(world["scene"])}]}

    def client_loop(stop_at: float) -> list[tuple[int, str | None, dict]]:
        import httpx

        seen = []
        with httpx.Client(base_url=server.url, timeout=120) as c:
            while time.monotonic() < stop_at:
                r = c.post("/predict", json=body)
                p = r.json()["predictions"][0] if r.status_code == 200 else {}
                seen.append((r.status_code, p.get("model_version"), (p.get("faces") or [{}])[0].get("probabilities")))
                if p.get("model_version") not in (None, first) and len(seen) > 3:
                    break
        return seen

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client_loop, time.monotonic() + 240) for _ in range(4)]
        time.sleep(1.0)  # the clients are sending
        second = _push(world["poor"], world["evaluation"], str(world["root"] / "registry"))
        runs = [f.result() for f in futures]
    assert second["version"] != first
    for seen in runs:
        assert {s[0] for s in seen} == {200}, seen
        versions = [s[1] for s in seen]
        assert versions[0] == first and versions[-1] == second["version"], versions
        # Sequential requests of one client: once the new version answered, the old one never does again.
        assert versions == sorted(versions, key=lambda v: v != first), versions
        old_probs = {json.dumps(s[2]) for s in seen if s[1] == first}
        new_probs = {json.dumps(s[2]) for s in seen if s[1] == second["version"]}
        assert len(old_probs) == 1 and len(new_probs) == 1 and old_probs != new_probs  # really another model
    assert server.client.get("/health").json()["version"] == second["version"]
    assert "now serving version " + second["version"] in server.log()


def test_a_full_queue_answers_503_and_a_slow_body_408(world):
    # The registry destination and the model's name in it, as push's flags name them.
    s = ServerProcess(str(world["root"]), "--model", str(world["root"] / "registry"), "--model-name", "au",
                      "--poll-s", "0", "--max-queue", "1", "--max-batch", "1", "--max-instances", "1",
                      "--batch-window-ms", "0", "--deadline-s", "10")
    try:
        s.wait_ready()
        assert s.client.get("/health").json()["model"] == "au"
        body = {"instances": [{"b64": media.b64(world["scene"])}]}

        def one(_):
            import httpx

            with httpx.Client(base_url=s.url, timeout=120) as c:
                r = c.post("/predict", json=body)
                return r.status_code, r.headers.get("retry-after"), r.json()

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(48)))
        statuses = [a[0] for a in answers]
        assert set(statuses) == {200, 503}, statuses
        for status, retry_after, doc in answers:
            if status == 503:
                assert retry_after == "1" and "the server is busy" in doc["error"]
        # A client that announces 1,000 bytes and sends 10 gets 408 at the deadline, not a connection held forever.
        with socket.create_connection(("127.0.0.1", s.port), timeout=60) as slow:
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"instances")
            started = time.monotonic()
            answer = ""
            while "}" not in answer:  # the head and the JSON body may come in two reads
                part = slow.recv(65536).decode(errors="replace")
                if not part:
                    break
                answer += part
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 10 s" in answer, answer
        assert 5 < time.monotonic() - started < 50
        assert s.client.get("/health").status_code == 200
    finally:
        assert s.stop() in (0, -signal.SIGTERM), s.log()


def test_the_cli_says_what_is_wrong_before_it_starts(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "components.serve", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120, check=True).stdout
    assert "--max-queue" in help_text and "AIP_STORAGE_URI" in help_text
    done = subprocess.run([sys.executable, "-m", "components.serve", "--model", str(tmp_path / "nothing")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is not a model" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "components.serve"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("AIP_")})
    assert done.returncode == 2 and "no model" in done.stderr
    done = subprocess.run([sys.executable, "pipeline.py", "serve", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--max-queue" in done.stdout
