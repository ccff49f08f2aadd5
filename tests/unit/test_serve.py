"""Unit tests of the model server: the batcher, the request parsers, and the app on a fake scorer (no socket, no sleep).

The event loop is driven by the tests: a fake executor holds each batch until the test releases it, so what is
queued, batched, refused or swapped at each moment is known without waiting for time to pass.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import os
import struct

import pytest

import face_media as media  # tests/conftest.py puts tests/data/evaluate on the path

from components.serve import protocols
from components.serve.app import create_app, default_model_name
from components.serve.batcher import Batcher, QueueFull
from components.serve.params import Settings, check
from components.serve.protocols import RequestError


# --- fakes ------------------------------------------------------------------------------------------------------
class FakeScorer:
    """Scores an image as its length; records each batch. An image b"bad" gets the Scorer's not_image error."""

    def __init__(self, version=None, fail=False):
        self.version = version
        self.fail = fail
        self.batches: list[list[str]] = []
        self.warmed = 0
        self.task = "au"

    def warmup(self):
        self.warmed += 1

    def score(self, images, names):
        self.batches.append(list(names))
        if self.fail:
            raise RuntimeError("the fake model broke")
        out = []
        for data, name in zip(images, names):
            if data == b"bad":
                out.append({"image": name, "width": 0, "height": 0, "faces": [], "error": f"{name} is not an image",
                            "reason": "not_image"})
                continue
            out.append({"image": name, "width": 64, "height": 48, "error": None, "reason": None, "faces_found": 1,
                        "faces": [{"face": 0, "box": [1.0, 2.0, 30.0, 30.0], "score": 0.9, "angle": 0.0,
                                   "landmarks": [], "probabilities": {"AU1": 0.9, "AU2": len(data) / 1e6},
                                   "active": ["AU1"]}], "version": self.version})
        return out

    def describe(self):
        return {"model": "fake", "version": self.version, "task": "au", "au_ids": [1, 2]}


class HeldExecutor(concurrent.futures.Executor):
    """Runs everything at once on the loop's thread, except score() calls while `hold` is on: those wait in
    `held` until release() (a batch the scorer is busy with, for as long as the test wants)."""

    def __init__(self, hold=False):
        self.hold = hold
        self.held: list[tuple] = []

    def submit(self, fn, *args, **kwargs):
        f = concurrent.futures.Future()
        if self.hold and getattr(fn, "__name__", "") == "score":
            self.held.append((f, fn, args))
            return f
        self._run(f, fn, args)
        return f

    @staticmethod
    def _run(f, fn, args):
        try:
            f.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001 - handed to the awaiting coroutine
            f.set_exception(e)

    def release(self):
        held, self.held = self.held, []
        for f, fn, args in held:
            self._run(f, fn, args)


async def turn(n: int = 5):
    """Lets the other tasks run n times (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


def run(coro):
    # A safety net only: a scenario never waits for time to pass, so one that does is a hang to report.
    return asyncio.run(asyncio.wait_for(coro, 120))


# --- the batcher ------------------------------------------------------------------------------------------------
def test_concurrent_requests_share_one_batch_and_each_gets_its_own_results():
    async def scenario():
        model = FakeScorer()
        b = Batcher(max_batch=8, window_s=0.0, max_queue=16, executor=HeldExecutor())
        collector = asyncio.create_task(b.run())
        r1, r2 = await asyncio.gather(b.submit(model, [b"a", b"bb"], ["r1-0", "r1-1"]),
                                      b.submit(model, [b"ccc"], ["r2-0"]))
        collector.cancel()
        return model, r1, r2, b

    model, r1, r2, b = run(scenario())
    assert model.batches == [["r1-0", "r1-1", "r2-0"]]
    assert [r["image"] for r in r1] == ["r1-0", "r1-1"] and [r["image"] for r in r2] == ["r2-0"]
    assert r2[0]["faces"][0]["probabilities"]["AU2"] == pytest.approx(3e-6)
    assert (b.batches, b.scored) == (1, 3)


def test_a_batch_holds_at_most_max_batch_images_oldest_first():
    async def scenario():
        model = FakeScorer()
        b = Batcher(max_batch=2, window_s=0.0, max_queue=16, executor=HeldExecutor())
        collector = asyncio.create_task(b.run())
        await b.submit(model, [b"1", b"2", b"3", b"4", b"5"], ["a", "b", "c", "d", "e"])
        collector.cancel()
        return model

    assert run(scenario()).batches == [["a", "b"], ["c", "d"], ["e"]]


def test_a_full_batch_goes_at_once_without_waiting_for_the_window():
    async def scenario():
        model = FakeScorer()
        # An hour's window: the test would hang if a batch waited for it; a full batch must not.
        b = Batcher(max_batch=3, window_s=3600.0, max_queue=16, executor=HeldExecutor())
        collector = asyncio.create_task(b.run())
        first = asyncio.create_task(b.submit(model, [b"1", b"2"], ["a", "b"]))
        await turn()
        assert model.batches == [] and b.queued == 2  # waiting for the window or a third image
        second = asyncio.create_task(b.submit(model, [b"3"], ["c"]))
        await asyncio.gather(first, second)
        collector.cancel()
        return model

    assert run(scenario()).batches == [["a", "b", "c"]]


def test_images_that_arrive_while_the_scorer_is_busy_form_the_next_batch():
    async def scenario():
        model = FakeScorer()
        ex = HeldExecutor(hold=True)
        b = Batcher(max_batch=8, window_s=0.0, max_queue=16, executor=ex)
        collector = asyncio.create_task(b.run())
        first = asyncio.create_task(b.submit(model, [b"1"], ["a"]))
        await turn()
        later = [asyncio.create_task(b.submit(model, [b"x"], [n])) for n in "bcd"]
        await turn()
        assert len(ex.held) == 1 and b.queued == 3
        ex.release()
        await turn()
        ex.release()
        await asyncio.gather(first, *later)
        collector.cancel()
        return model

    assert run(scenario()).batches == [["a"], ["b", "c", "d"]]


def test_batches_in_flight_a_second_batch_is_scored_while_the_first_is_and_no_third():
    async def scenario():
        model = FakeScorer()
        ex = HeldExecutor(hold=True)
        b = Batcher(max_batch=2, window_s=0.0, max_queue=16, executor=ex, in_flight=2)
        collector = asyncio.create_task(b.run())
        first = asyncio.create_task(b.submit(model, [b"1", b"2"], ["a", "b"]))
        await turn()
        second = asyncio.create_task(b.submit(model, [b"3", b"4"], ["c", "d"]))
        await turn()
        assert len(ex.held) == 2 and b.queued == 0  # both batches with the scorer at once
        third = asyncio.create_task(b.submit(model, [b"5"], ["e"]))
        await turn()
        assert len(ex.held) == 2 and b.queued == 1  # the third waits for one of them
        ex.release()
        await turn()
        assert len(ex.held) == 1 and b.queued == 0  # one finished: the third went in
        ex.release()
        results = await asyncio.gather(first, second, third)
        collector.cancel()
        return model, results

    model, results = run(scenario())
    assert model.batches == [["a", "b"], ["c", "d"], ["e"]]
    assert [[r["image"] for r in rs] for rs in results] == [["a", "b"], ["c", "d"], ["e"]]
    with pytest.raises(ValueError, match="in_flight"):
        Batcher(in_flight=0)


def test_a_full_queue_refuses_at_once_and_queues_nothing():
    async def scenario():
        model = FakeScorer()
        ex = HeldExecutor(hold=True)
        b = Batcher(max_batch=1, window_s=0.0, max_queue=2, executor=ex)
        collector = asyncio.create_task(b.run())
        busy = asyncio.create_task(b.submit(model, [b"1"], ["a"]))
        await turn()
        waiting = asyncio.create_task(b.submit(model, [b"2", b"3"], ["b", "c"]))
        await turn()
        assert b.queued == 2
        with pytest.raises(QueueFull, match="at most 2 images"):
            await b.submit(model, [b"4"], ["d"])
        assert b.queued == 2
        while not (busy.done() and waiting.done()):
            ex.release()
            await turn()
        collector.cancel()
        return model

    assert run(scenario()).batches == [["a"], ["b"], ["c"]]


def test_a_request_that_gives_up_leaves_nothing_to_score():
    async def scenario():
        model = FakeScorer()
        ex = HeldExecutor(hold=True)
        b = Batcher(max_batch=8, window_s=0.0, max_queue=3, executor=ex)
        collector = asyncio.create_task(b.run())
        busy = asyncio.create_task(b.submit(model, [b"1"], ["a"]))
        await turn()
        gone = asyncio.create_task(b.submit(model, [b"2", b"3", b"4"], ["b", "c", "d"]))
        await turn()
        gone.cancel()  # what asyncio.wait_for does at the deadline, or a client that hung up
        await turn()
        # Its images no longer count against the queue: a new request fits.
        kept = asyncio.create_task(b.submit(model, [b"5", b"6", b"7"], ["e", "f", "g"]))
        await turn()
        ex.release()
        await turn()
        ex.release()
        await asyncio.gather(busy, kept)
        collector.cancel()
        return model, gone

    model, gone = run(scenario())
    assert gone.cancelled()
    assert model.batches == [["a"], ["e", "f", "g"]]


def test_a_batch_holds_one_model_so_queued_requests_finish_on_the_model_they_came_with():
    async def scenario():
        old, new = FakeScorer("v1"), FakeScorer("v2")
        ex = HeldExecutor(hold=True)
        b = Batcher(max_batch=8, window_s=0.0, max_queue=16, executor=ex)
        collector = asyncio.create_task(b.run())
        busy = asyncio.create_task(b.submit(old, [b"0"], ["busy"]))  # keeps the scorer busy meanwhile
        await turn()
        before = asyncio.create_task(b.submit(old, [b"1", b"2"], ["a", "b"]))
        after = asyncio.create_task(b.submit(new, [b"3"], ["c"]))  # the swap happened between the two
        later = asyncio.create_task(b.submit(old, [b"4"], ["d"]))  # a request that had the old model in hand
        await turn()
        assert b.queued == 4
        while not all(t.done() for t in (busy, before, after, later)):
            ex.release()
            await turn()
        collector.cancel()
        return old, new, before.result(), after.result()

    old, new, before, after = run(scenario())
    assert old.batches == [["busy"], ["a", "b", "d"]] and new.batches == [["c"]]
    assert {r["version"] for r in before} == {"v1"} and after[0]["version"] == "v2"


def test_a_failing_batch_fails_its_requests_only():
    async def scenario():
        broken, good = FakeScorer(fail=True), FakeScorer()
        b = Batcher(max_batch=8, window_s=0.0, max_queue=16, executor=HeldExecutor())
        collector = asyncio.create_task(b.run())
        with pytest.raises(RuntimeError, match="the fake model broke"):
            await b.submit(broken, [b"1"], ["a"])
        result = await b.submit(good, [b"2"], ["b"])
        collector.cancel()
        return result

    assert run(scenario())[0]["image"] == "b"


def test_batcher_refuses_nonsense_sizes():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(max_batch=0)


# --- the parsers ------------------------------------------------------------------------------------------------
def _jpeg(size=(64, 48), colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG")
    return out.getvalue()


def test_instances_are_read_in_vertex_and_tf_serving_forms():
    body = json.dumps({"instances": [{"b64": media.b64(b"one")}, {"image_bytes": {"b64": media.b64(b"two")}},
                                     {"b64": base64.urlsafe_b64encode(b"\xfb\xff").decode().rstrip("=")}]})
    images, names = protocols.parse_instances(body.encode(), max_instances=8)
    assert images == [b"one", b"two", b"\xfb\xff"] and names == ["instances[0]", "instances[1]", "instances[2]"]


@pytest.mark.parametrize("body, status, words", [
    (b"", 400, "the body is empty"),
    (b'{"instances": [', 400, "not valid JSON"),
    (b'{"inputs": []}', 400, 'no "instances"'),
    (b'{"instances": []}', 400, "non-empty list"),
    (b'{"instances": [{"image": "x"}]}', 400, 'instances[0] has no "b64"'),
    (b'{"instances": [{"b64": 3}]}', 400, "instances[0].b64 is a int"),
    (b'{"instances": [{"b64": "abc!"}]}', 400, "instances[0].b64 is not valid base64"),
    (b'{"instances": [{"b64": "a"}]}', 400, "not valid base64"),
    (json.dumps({"instances": [{"b64": "AA=="}] * 3}).encode(), 413, "at most 2 per request"),
])
def test_bad_instances_say_what_was_expected(body, status, words):
    with pytest.raises(RequestError) as e:
        protocols.parse_instances(body, max_instances=2)
    assert e.value.status == status and words in e.value.message


def test_v2_takes_base64_json_and_the_binary_extension():
    doc = {"id": "req-1", "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                                      "data": [media.b64(b"one"), media.b64(b"three")]}]}
    images, names, rid = protocols.parse_v2(json.dumps(doc).encode(), None, 8)
    assert images == [b"one", b"three"] and names == ["inputs[0][0]", "inputs[0][1]"] and rid == "req-1"
    doc["inputs"][0]["shape"], doc["inputs"][0]["data"] = [2, 1], [[media.b64(b"one")], [media.b64(b"x")]]
    assert protocols.parse_v2(json.dumps(doc).encode(), None, 8)[0] == [b"one", b"x"]

    raw = struct.pack("<I", 3) + b"one" + struct.pack("<I", 5) + b"\x00\xff\x10ab"
    header = json.dumps({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    images, _, rid = protocols.parse_v2(header + raw, str(len(header)), 8)
    assert images == [b"one", b"\x00\xff\x10ab"] and rid is None


@pytest.mark.parametrize("doc, header_length, words", [
    ({"inputs": []}, None, "expected one input"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, None, "expected BYTES"),
    ({"inputs": [{"name": "image", "shape": "1", "datatype": "BYTES", "data": ["AA=="]}]}, None, "expected [N]"),
    ({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["AA=="]}]}, None, "its shape says 2"),
    ({"inputs": [{"name": "image", "shape": [0], "datatype": "BYTES", "data": []}]}, None, "holds no image"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]}, None,
     "inputs[0].data[0] is not valid base64"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["AA=="]}]}, "9999",
     "Inference-Header-Content-Length"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 7}}]},
     None, "binary_data_size is 7"),
])
def test_bad_v2_requests_say_what_was_expected(doc, header_length, words):
    with pytest.raises(RequestError) as e:
        protocols.parse_v2(json.dumps(doc).encode(), header_length, 8)
    assert e.value.status == 400 and words in e.value.message


def test_v2_binary_data_that_does_not_add_up_is_refused():
    raw = struct.pack("<I", 10) + b"short"
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    with pytest.raises(RequestError, match="says 10 bytes, but only 5 follow"):
        protocols.parse_v2(header + raw, str(len(header)), 8)


def test_the_image_check_reads_only_the_header():
    assert protocols.check_image(_jpeg(), "x", max_pixels=64 * 48) is None
    failed = protocols.check_image(_jpeg(), "x", max_pixels=64 * 48 - 1)
    assert failed["reason"] == "too_large" and "64x48 = 3,072 pixels" in failed["error"]
    assert (failed["width"], failed["height"], failed["faces"], failed["faces_found"]) == (64, 48, [], 0)
    # A decompression bomb: 100,000 x 100,000 pixels announced by a header of a few dozen bytes.
    bomb = protocols.check_image(media.png_header(100_000, 100_000), "bomb", max_pixels=64_000_000)
    assert bomb["reason"] == "too_large" and bomb["error"].startswith("bomb is too large")
    big = protocols.check_image(media.png_header(9_000, 8_000), "big", max_pixels=64_000_000)
    assert big["reason"] == "too_large" and "9000x8000" in big["error"]
    for data, words in ((b"", "is empty"), (b"GIF89a-not-really", "not an image"), (b"hello", "not an image")):
        failed = protocols.check_image(data, "x", 10**9)
        assert failed["reason"] == "not_image" and words in failed["error"]


def test_a_request_fails_only_when_none_of_its_images_could_be_scored():
    ok = {"error": None}
    protocols.check_results([ok])
    protocols.check_results([ok, {"error": "why", "reason": "not_image"}])
    for reason, status in (("not_image", 400), ("corrupt", 400), ("too_large", 413), ("too_small", 422),
                           ("model_failed", 422), ("something_new", 422)):
        with pytest.raises(RequestError) as e:
            protocols.check_results([{"error": "why", "reason": reason}])
        assert e.value.status == status and e.value.message == "why"
    with pytest.raises(RequestError, match="why \\(and the request's 1 other images failed too\\)"):
        protocols.check_results([{"error": "why", "reason": "corrupt"}, {"error": "also", "reason": "too_small"}])


def test_raw_bytes_need_an_image_content_type():
    protocols.check_image_content_type("image/jpeg")
    protocols.check_image_content_type("IMAGE/PNG; q=1")
    for ct in (None, "", "application/octet-stream", "text/plain"):
        with pytest.raises(RequestError) as e:
            protocols.check_image_content_type(ct)
        assert e.value.status == 415 and "image/jpeg" in e.value.message


def test_settings_are_checked_and_names_come_from_the_registry():
    assert check(Settings(model="m")) == []
    problems = check(Settings(model="", max_queue=4, max_instances=8, health_route="health", threshold=1.5))
    assert any("no model" in p for p in problems) and any("--max-instances 8" in p for p in problems)
    assert any("must start with /" in p for p in problems) and any("--threshold" in p for p in problems)
    assert default_model_name("runs/registry/au-detector") == "au-detector"
    assert default_model_name("gs://b/registry/au-detector/20260101T000000Z-abcdef12") == "au-detector"
    assert default_model_name("runs/x/model/") == "model"


def test_the_cli_reads_vertex_ais_environment_as_defaults():
    from components.serve.__main__ import build_parser, environment_defaults

    env = {"AIP_HTTP_PORT": "9090", "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict",
           "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2", "AIP_STORAGE_URI": "gs://b/registry/au"}
    args = build_parser(env).parse_args([])
    assert (args.port, args.host, args.model) == (9090, "0.0.0.0", "gs://b/registry/au")
    assert args.predict_route.endswith(":predict") and args.health_route.endswith("deployedModels/2")
    assert build_parser(env).parse_args(["--port", "1234", "--host", "127.0.0.1"]).port == 1234
    plain = build_parser({}).parse_args(["--model", "m"])
    assert (plain.port, plain.host, plain.predict_route) == (8080, "127.0.0.1", "/predict")
    with pytest.raises(ValueError, match="AIP_HTTP_PORT"):
        environment_defaults({"AIP_HTTP_PORT": "eighty"})


# --- the app on a fake scorer -------------------------------------------------------------------------------------
def _registry(root, versions: list[str], card: dict | None = None) -> str:
    """A registry model root as push writes it: version folders with push.json, LATEST naming the last."""
    model_root = os.path.join(root, "au-detector")
    for v in versions:
        os.makedirs(os.path.join(model_root, v), exist_ok=True)
        with open(os.path.join(model_root, v, "push.json"), "w") as f:
            json.dump({"version": v}, f)
        if card is not None:
            with open(os.path.join(model_root, v, "model_card.json"), "w") as f:
                json.dump({**card, "version": v}, f)
            with open(os.path.join(model_root, v, "model_card.md"), "w") as f:
                f.write(f"# au-detector {v}\n")
    with open(os.path.join(model_root, "LATEST"), "w") as f:
        f.write(versions[-1])
    return model_root


V1, V2 = "20260101T000000Z-aaaaaaaa", "20260102T000000Z-bbbbbbbb"


class Harness:
    """The app with fake scorers (one per version folder loaded), an httpx client on it, and the held executor."""

    def __init__(self, model_uri: str, hold=False, load_gate=None, **settings):
        self.loaded: dict[str, FakeScorer] = {}
        self.load_gate = load_gate
        self.executor = HeldExecutor(hold)
        # One batch at a time unless a test asks for more: the scenarios count what waits behind the held batch.
        settings = {"max_batch": 8, "batch_window_ms": 0.0, "poll_s": 0.0, "batches_in_flight": 1, **settings}
        self.app = create_app(Settings(model=model_uri, **settings), self._load, executor=self.executor)
        self.server = self.app.state.server

    def _load(self, uri):
        if self.load_gate is not None:
            self.load_gate.wait(timeout=60)  # a thread of asyncio.to_thread: the loop goes on meanwhile
        version = os.path.basename(uri) if os.path.exists(os.path.join(uri, "push.json")) else None
        if uri.endswith("broken"):
            raise RuntimeError(f"{uri} is broken")
        self.loaded[uri] = FakeScorer(version)
        return self.loaded[uri]

    async def __aenter__(self):
        import httpx

        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://serve.test")
        return self

    async def __aexit__(self, *exc):
        await self.client.aclose()
        await self._lifespan.__aexit__(*exc)

    async def ready(self):
        assert await self.server.live.wait_settled()


def test_model_name_picks_the_model_of_a_registry_destination(tmp_path):
    from components.serve.models import model_uri

    root = _registry(str(tmp_path), [V1])
    assert model_uri(str(tmp_path), "au-detector") == root  # --model runs/registry --model-name au-detector
    assert model_uri(root, "au-detector") == root  # already the model root: the name only names it
    assert model_uri(os.path.join(root, V1), "au-detector") == os.path.join(root, V1)
    assert model_uri(root) == root


def _instances(*images: bytes) -> dict:
    return {"instances": [{"b64": media.b64(i)} for i in images]}


def test_every_protocol_answers_with_the_version_that_scored(tmp_path):
    root = _registry(str(tmp_path), [V1], card={"model_details": {"name": "au-detector"}})
    img = _jpeg()

    async def scenario():
        async with Harness(root) as h:
            await h.ready()
            c = h.client
            health = await c.get("/health")
            assert health.status_code == 200 and health.json() == {"status": "ready", "model": "au-detector",
                                                                   "version": V1}
            vertex = await c.post("/predict", json=_instances(img, img))
            assert vertex.status_code == 200 and vertex.headers["x-model-version"] == V1
            preds = vertex.json()["predictions"]
            assert [p["image"] for p in preds] == ["instances[0]", "instances[1]"]
            assert preds[0]["model_version"] == V1 and preds[0]["faces"][0]["active"] == ["AU1"]

            v1 = await c.post("/v1/models/au-detector:predict", json=_instances(img))
            assert v1.status_code == 200 and v1.json()["predictions"][0]["faces"][0]["box"] == [1.0, 2.0, 30.0, 30.0]
            assert (await c.get("/v1/models/au-detector")).json() == {"name": "au-detector", "ready": True}

            assert (await c.get("/v2/health/live")).status_code == 200
            assert (await c.get("/v2/health/ready")).json() == {"ready": True}
            assert (await c.get("/v2/models/au-detector/ready")).status_code == 200
            meta = (await c.get("/v2/models/au-detector")).json()
            assert meta["versions"] == [V1] and meta["inputs"][0]["datatype"] == "BYTES"
            infer = await c.post("/v2/models/au-detector/infer", json={
                "id": "7", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [media.b64(img)]}]})
            out = infer.json()
            assert infer.status_code == 200 and out["model_version"] == V1 and out["id"] == "7"
            assert out["outputs"][0]["shape"] == [1] and json.loads(out["outputs"][0]["data"][0])["faces_found"] == 1
            raw = struct.pack("<I", len(img)) + img
            header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                             "parameters": {"binary_data_size": len(raw)}}]}).encode()
            binary = await c.post("/v2/models/au-detector/infer", content=header + raw, headers={
                "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
            assert binary.status_code == 200 and binary.json()["outputs"][0]["name"] == "faces"

            faces = await c.post("/v1/faces?name=me.jpg", content=img, headers={"Content-Type": "image/jpeg"})
            body = faces.json()
            assert faces.status_code == 200 and body["version"] == V1 and body["model_name"] == "au-detector"
            assert body["images"][0]["image"] == "me.jpg" and body["au_ids"] == [1, 2]

            card = await c.get("/model-card")
            assert card.status_code == 200 and card.json()["version"] == V1
            markdown = await c.get("/model-card.md")
            assert markdown.text == f"# au-detector {V1}\n"
            assert markdown.headers["content-type"].startswith("text/markdown")
            # Every image of the requests above (2 + 1 + 1 + 1 + 1) went through the one fake scorer.
            assert sum(len(b) for b in h.loaded[os.path.join(root, V1)].batches) == 6
            metrics = (await c.get("/metrics")).text
            assert "serve_images_scored_total 6\n" in metrics and f'serve_model_ready{{version="{V1}"}} 1' in metrics

    run(scenario())


def test_bad_requests_get_a_status_and_a_message_and_the_server_goes_on(tmp_path):
    root = _registry(str(tmp_path), [V1])
    img = _jpeg()

    async def scenario():
        async with Harness(root, max_body_bytes=5000, max_pixels=64 * 48, max_instances=4, max_queue=8) as h:
            await h.ready()
            c = h.client

            async def status(method, url, **kw):
                r = await c.request(method, url, **kw)
                return r.status_code, r.json().get("error", "")

            code, msg = await status("POST", "/predict", content=b"{", headers={"Content-Type": "application/json"})
            assert code == 400 and msg.startswith("the body is not valid JSON") and '{"instances": [{"b64"' in msg
            code, msg = await status("POST", "/predict", content=b"x" * 6000,
                                     headers={"Content-Type": "application/json"})
            assert code == 413 and "at most 5,000" in msg
            code, msg = await status("POST", "/predict", content=b"a=b",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert code == 415 and "application/json" in msg
            code, msg = await status("POST", "/predict", json=_instances(b"hello"))
            assert code == 400 and "instances[0] is not an image" in msg
            code, msg = await status("POST", "/predict", json=_instances(_jpeg((65, 48))))
            assert code == 413 and "65x48 = 3,120 pixels" in msg
            code, msg = await status("POST", "/predict", json=_instances(*[img] * 5))
            assert code == 413 and "at most 4" in msg
            code, msg = await status("POST", "/v1/faces", content=img, headers={"Content-Type": "text/plain"})
            assert code == 415 and "image/jpeg" in msg
            code, msg = await status("POST", "/v1/faces", content=b"", headers={"Content-Type": "image/png"})
            assert code == 400 and "body is empty" in msg
            code, msg = await status("POST", "/v2/models/other/infer", json={})
            assert code == 404 and "serves 'au-detector'" in msg
            code, msg = await status("POST", "/v2/models/au-detector/infer", json={"inputs": "x"})
            assert code == 400 and "expected one input" in msg
            code, msg = await status("GET", "/predict")
            assert code == 405
            code, msg = await status("GET", "/model-card")
            assert code == 404 and "model_card.json does not exist" in msg
            code, msg = await status("GET", "/nowhere")
            assert code == 404 and "no route /nowhere" in msg
            # After all that, it still answers.
            ok = await c.post("/predict", json=_instances(img))
            assert ok.status_code == 200

    run(scenario())


def test_images_that_cannot_be_scored_get_their_error_beside_the_others_answers(tmp_path, monkeypatch):
    root = _registry(str(tmp_path), [V1])
    bomb = media.png_header(100_000, 100_000)

    async def scenario():
        async with Harness(root) as h:
            await h.ready()
            r = await h.client.post("/predict", json=_instances(_jpeg(), bomb, b"hello"))
            assert r.status_code == 200
            good, too_large, not_image = r.json()["predictions"]
            assert good["error"] is None and good["faces"]
            assert too_large["reason"] == "too_large" and too_large["faces"] == []
            assert not_image["reason"] == "not_image" and "instances[2] is not an image" in not_image["error"]
            # Only the good one reached the model: the bomb was never decoded.
            assert h.loaded[os.path.join(root, V1)].batches == [["instances[0]"]]
            # The header check passes b"bad"'s stand-in below; the fake scorer then says not_image, as the Scorer
            # does for a file whose header is fine and whose data is not: alone in its request, it fails it.
            monkeypatch.setattr(protocols, "check_image", lambda data, where, max_pixels: None)
            r = await h.client.post("/predict", json=_instances(b"bad"))
            assert r.status_code == 400 and r.json() == {"error": "instances[0] is not an image"}
            r = await h.client.post("/v1/faces", content=b"bad", headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 400 and r.json() == {"error": "body is not an image"}

    run(scenario())


def test_not_ready_until_the_model_is_loaded_and_warmed(tmp_path):
    import threading

    root = _registry(str(tmp_path), [V1])
    gate = threading.Event()

    async def scenario():
        async with Harness(root, load_gate=gate) as h:
            c = h.client
            health = await c.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "loading"
            assert (await c.get("/v2/health/ready")).status_code == 503
            assert (await c.get("/v2/health/live")).status_code == 200
            assert (await c.get("/v2/models/au-detector/ready")).status_code == 503
            early = await c.post("/predict", json=_instances(_jpeg()))
            assert early.status_code == 503 and early.headers["retry-after"] == "5"
            gate.set()
            await h.ready()
            assert (await c.get("/health")).status_code == 200
            assert h.loaded[os.path.join(root, V1)].warmed == 1

    run(scenario())


def test_a_model_that_cannot_load_says_why_and_stops_the_server(tmp_path):
    broken = str(tmp_path / "broken")
    os.makedirs(broken)
    stopped = []

    async def scenario():
        h = Harness(broken)
        h.server._on_fatal = stopped.append
        async with h:
            assert await h.server.live.wait_settled() is False
            health = await h.client.get("/health")
            assert health.status_code == 503 and "broken is broken" in health.json()["error"]

    run(scenario())
    assert len(stopped) == 1 and "cannot be served" in stopped[0]


def test_a_full_queue_answers_503_with_retry_after(tmp_path):
    root = _registry(str(tmp_path), [V1])
    img = _jpeg()

    async def scenario():
        async with Harness(root, hold=True, max_batch=1, max_queue=1, max_instances=1) as h:
            await h.ready()
            c = h.client
            busy = asyncio.create_task(c.post("/predict", json=_instances(img)))
            await turn(50)  # until its image is with the scorer
            queued = asyncio.create_task(c.post("/predict", json=_instances(img)))
            await turn(50)  # until its image waits in the queue
            assert len(h.executor.held) == 1 and h.server.batcher.queued == 1
            refused = await c.post("/predict", json=_instances(img))
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "the server is busy (the queue holds 1 images, at most 1)" in refused.json()["error"]
            # A request whose body was read before the queue filled gets the batcher's own refusal.
            with pytest.raises(QueueFull, match="at most 1 images"):
                await h.server.batcher.submit(h.loaded[os.path.join(root, V1)], [img], ["late"])
            while not (busy.done() and queued.done()):
                h.executor.release()
                await turn()
            assert busy.result().status_code == 200 and queued.result().status_code == 200

    run(scenario())


def test_a_request_past_its_deadline_gets_504_and_its_images_are_dropped(tmp_path):
    root = _registry(str(tmp_path), [V1])

    async def scenario():
        # A deadline of a nanosecond passes at the loop's next turn: no time has to pass in the test.
        async with Harness(root, hold=True, deadline_s=1e-9) as h:
            await h.ready()
            late = await h.client.post("/predict", json=_instances(_jpeg()))
            assert late.status_code == 504 and "did not answer within 1e-09 s" in late.json()["error"]
            h.executor.release()  # had the batch reached the scorer, its answer now goes nowhere
            await turn()
            assert h.server.batcher.queued == 0
            assert (await h.client.get("/health")).status_code == 200

    run(scenario())


def test_a_new_latest_is_loaded_beside_the_old_and_requests_in_flight_finish_on_the_old(tmp_path):
    root = _registry(str(tmp_path), [V1], card={"model_details": {}})
    img = _jpeg()

    async def scenario():
        async with Harness(root, hold=True) as h:
            await h.ready()
            c = h.client
            in_flight = asyncio.create_task(c.post("/predict", json=_instances(img)))
            await turn(50)
            assert len(h.executor.held) == 1  # v1 is scoring it
            assert await h.server.live.poll_once() is False  # LATEST unchanged: nothing to do
            _registry(str(tmp_path), [V2], card={"model_details": {}})  # a push: v2, then LATEST
            assert await h.server.live.poll_once() is True
            assert h.loaded[os.path.join(root, V2)].warmed == 1
            assert (await c.get("/health")).json()["version"] == V2
            after = asyncio.create_task(c.post("/predict", json=_instances(img)))
            await turn(50)
            while not (in_flight.done() and after.done()):
                h.executor.release()
                await turn()
            assert in_flight.result().json()["predictions"][0]["model_version"] == V1
            assert after.result().json()["predictions"][0]["model_version"] == V2
            assert after.result().headers["x-model-version"] == V2
            assert (await c.get("/model-card")).json()["version"] == V2
            # A push that cannot be loaded: logged, not retried, and the live version goes on.
            os.makedirs(os.path.join(root, "20260103T000000Z-broken"))
            with open(os.path.join(root, "20260103T000000Z-broken", "push.json"), "w") as f:
                f.write("{}")
            with open(os.path.join(root, "LATEST"), "w") as f:
                f.write("20260103T000000Z-broken")
            assert await h.server.live.poll_once() is False
            assert await h.server.live.poll_once() is False
            assert (await c.get("/health")).json()["version"] == V2

    run(scenario())
