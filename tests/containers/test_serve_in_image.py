"""The model server runs in the CPU image and answers requests.

It runs as `pipeline.py deploy` runs it (its KServe manifest's image, command and arguments) on a pushed model: the
host's network (it listens on 127.0.0.1 only), as a plain user, only the registry mounted. Ready once the model is
loaded, it answers a Vertex AI /predict and a raw image with the face, and a bad request with 4xx while it keeps
serving; SIGTERM (docker stop) ends it cleanly."""
from __future__ import annotations

import base64
import socket
import subprocess
import time
import uuid

import pytest
from conftest import docker_command  # tests/containers/conftest.py: `docker run` as README shows it

import face_media as media  # tests/conftest.py puts tests/data/evaluate on the path
import tiny_model as tiny
from pipeline import deploy

READY_S = 300  # TensorFlow and MediaPipe load in tens of seconds on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_args(container: dict, version_uri: str, port: int) -> list[str]:
    """The manifest's arguments with what Kubernetes and the cluster would fill in: $(STORAGE_URI) expanded from its
    env, and loopback and a free port instead of 0.0.0.0:8080 (the container shares the host's network here)."""
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"STORAGE_URI": version_uri}, env
    args = [a.replace("$(STORAGE_URI)", env["STORAGE_URI"]) for a in container["args"]]
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        args[args.index(flag) + 1] = value
    return args


@pytest.mark.slow
def test_the_server_answers_in_the_cpu_image_and_survives_a_bad_request(images, user, pushed_model, tmp_path):
    import httpx

    started = time.monotonic()
    version_uri, version = deploy.resolve(pushed_model["model_root"])
    assert version == pushed_model["version"]
    manifest = deploy.kserve_manifest(version_uri, version, "au", image=images["cpu"])
    (container,) = manifest["spec"]["predictor"]["containers"]
    assert container["image"] == images["cpu"]
    port = _free_port()
    name = f"au-test-{uuid.uuid4().hex[:12]}"
    command = docker_command(container["image"], [*container["command"], *_server_args(container, version_uri, port)],
                             [pushed_model["registry"]], user, network="host", name=name)
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def server_log() -> str:
        return log_path.read_text(errors="replace")[-3000:]

    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        # Ready on the manifest's readiness route once the model is loaded and warmed.
        ready_route = container["readinessProbe"]["httpGet"]["path"]
        deadline = time.monotonic() + READY_S
        while True:
            assert proc.poll() is None, f"the server's container exited ({proc.returncode}):\n{server_log()}"
            assert time.monotonic() < deadline, f"the server was not ready after {READY_S} s:\n{server_log()}"
            try:
                if client.get(ready_route).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.5)
        ready_s = time.monotonic() - started
        assert f"Uvicorn running on http://127.0.0.1:{port}" in server_log(), server_log()
        assert client.get(deploy.HEALTH_ROUTE).json() == {"status": "ready", "model": "au", "version": version}

        # Vertex AI's route: a photo's face is found and scored, a flat colour has none.
        photo = media.photo_bytes()
        flat = tiny.jpeg((0, 0, 255), size=64)
        vertex = client.post(deploy.PREDICT_ROUTE, json={"instances": [{"b64": base64.b64encode(photo).decode()},
                                                                       {"b64": base64.b64encode(flat).decode()}]})
        assert vertex.status_code == 200 and vertex.headers["x-model-version"] == version, vertex.text
        scored, no_face = vertex.json()["predictions"]
        assert scored["model_version"] == version and scored["error"] is None, scored
        (face,) = scored["faces"]
        assert set(face["probabilities"]) == {f"AU{a}" for a in tiny.AU_IDS}
        assert all(0.0 <= p <= 1.0 for p in face["probabilities"].values())
        x, y, w, h = face["box"]
        assert w > 100 and h > 100 and 0 <= x < 512 - w / 2 and 0 <= y < 600 - h / 2, face  # the photo is 512x600
        assert no_face["faces"] == [] and no_face["reason"] == "no_face", no_face

        # The same photo as raw bytes: the same face and probabilities.
        raw = client.post("/v1/faces", content=photo, headers={"Content-Type": "image/jpeg"})
        assert raw.status_code == 200 and raw.json()["version"] == version, raw.text
        (raw_face,) = raw.json()["images"][0]["faces"]
        assert raw_face["box"] == face["box"] and raw_face["probabilities"] == pytest.approx(face["probabilities"])

        # Bad requests get 4xx with a reason, and the server keeps serving.
        broken = client.post(deploy.PREDICT_ROUTE, content=b"{not json", headers={"Content-Type": "application/json"})
        assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"], broken.text
        cut = client.post("/v1/faces", content=photo[: len(photo) // 2], headers={"Content-Type": "image/jpeg"})
        assert cut.status_code == 400 and "damaged" in cut.json()["error"], cut.text
        assert proc.poll() is None, f"a bad request ended the server:\n{server_log()}"
        again = client.post(deploy.PREDICT_ROUTE, json={"instances": [{"b64": base64.b64encode(photo).decode()}]})
        assert again.status_code == 200 and again.json()["predictions"][0]["faces"][0]["box"] == face["box"]
    finally:
        client.close()
        # docker stop: SIGTERM, as a cluster stops a pod; uvicorn finishes, then ends by that signal (128 + 15).
        subprocess.run(["docker", "stop", "--time", "30", name], capture_output=True, timeout=90)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            subprocess.run(["docker", "rm", "--force", name], capture_output=True, timeout=60)
            proc.kill()
            raise
    assert code in (0, 143), f"the server did not stop cleanly ({code}):\n{server_log()}"
    assert "Application shutdown complete" in server_log(), server_log()
    print(f"server: ready in {ready_s:.1f} s, whole test {time.monotonic() - started:.1f} s")
