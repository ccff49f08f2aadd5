"""The Starlette app: the routes of each protocol, the limits on what a request may bring, readiness and the model swap.

Routes (the Vertex AI two follow AIP_PREDICT_ROUTE and AIP_HEALTH_ROUTE through the settings):
  GET  /health                          200 once the model is loaded and warmed, 503 before
  POST /predict                         Vertex AI: {"instances": [{"b64": ...}]} -> {"predictions": [...]}
  POST /v1/models/NAME:predict          KServe V1, the same body and answer
  GET  /v1/models/NAME                  KServe V1 readiness
  GET  /v2, /v2/health/live, /v2/health/ready, /v2/models/NAME, /v2/models/NAME/ready
  POST /v2/models/NAME/infer            KServe V2 (Open Inference Protocol), JSON or binary tensor data
  POST /v1/faces                        raw image bytes (Content-Type image/*) -> the model and the image's faces
  GET  /model-card, /model-card.md      the version's model_card.json / model_card.md (404 when it has none)
  GET  /metrics                         Prometheus counters: batches, images scored, queue, swaps
Every answer from the model carries the version that answered, in the body and in the X-Model-Version header.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from components.common import registry
from components.serve import protocols
from components.serve.batcher import Batcher, QueueFull
from components.serve.models import LiveModel, Loaded
from components.serve.protocols import RequestError

log = logging.getLogger(__name__)

VERSION_HEADER = "X-Model-Version"
RAW_ROUTE = "/v1/faces"
CARD_ROUTE = "/model-card"
METRICS_ROUTE = "/metrics"


def default_model_name(model_uri: str) -> str:
    """The name a registry model root has in it (<destination>/<model_name>); a version folder's parent's."""
    base = registry.basename(model_uri)
    parent = model_uri.rstrip("/")[: -len(base)].rstrip("/") if base else ""
    # A version folder is named <UTC time>-<digest>: its model's name is its parent's.
    if parent and len(base) > 17 and base[8:9] == "T" and base[15:16] == "Z":
        return registry.basename(parent) or base
    return base or "model"


class Server:
    """The app's state: settings, batcher, live model; the handlers are its methods."""

    def __init__(self, settings, load: Callable[[str], Any], executor=None, on_fatal: Callable[[str], None] = None):
        self.settings = settings
        self.model_name = settings.model_name or default_model_name(settings.model)
        self.batcher = Batcher(settings.max_batch, settings.batch_window_ms / 1000.0, settings.max_queue, executor,
                               settings.batches_in_flight)
        self.live = LiveModel(settings.model, load, self.batcher.call, settings.poll_s)
        self._on_fatal = on_fatal
        self._tasks: list[asyncio.Task] = []

    # --- life ---------------------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self._tasks = [asyncio.create_task(self.batcher.run(), name="batcher"),
                       asyncio.create_task(self._follow(), name="model")]
        try:
            yield
        finally:
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            self.batcher.close()

    async def _follow(self) -> None:
        try:
            await self.live.start()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the first model cannot be loaded: say why, then stop the server
            log.error("%s", self.live.error)
            if self._on_fatal is not None:
                self._on_fatal(self.live.error)

    # --- helpers ------------------------------------------------------------------------------------------------
    def _model(self) -> Loaded:
        current = self.live.current
        if current is None:
            raise RequestError(503, self.live.error or "the model is still loading; retry in a few seconds",
                               {"Retry-After": "5"} if self.live.error is None else None)
        return current

    def _check_name(self, name: str) -> None:
        if name != self.model_name:
            raise RequestError(404, f"no model named {name!r}: this server serves {self.model_name!r}")

    async def _body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"the body is {int(declared):,} bytes; this server takes at most {limit:,}")
        chunks: list[bytes] = []

        async def read() -> None:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:  # chunked bodies declare no length: stop reading at the limit
                    raise RequestError(413, f"the body is more than {limit:,} bytes; this server takes at most "
                                            f"{limit:,}")
                chunks.append(chunk)

        try:  # a client that sends its body slowly holds a connection: not longer than a request may take
            await asyncio.wait_for(read(), self.settings.deadline_s)
        except TimeoutError as e:
            raise RequestError(408, f"the body did not arrive within {self.settings.deadline_s:g} s") from e
        return b"".join(chunks)

    @staticmethod
    def _json_type(request: Request) -> None:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media and media != "application/json":
            raise RequestError(415, f"Content-Type is {media}; send application/json")

    def _room(self) -> None:
        """503 before the body is even read when the queue is full: an overloaded server refuses cheaply."""
        if self.batcher.queued >= self.batcher.max_queue:
            raise RequestError(503, f"the server is busy (the queue holds {self.batcher.max_queue} images, at most "
                                    f"{self.batcher.max_queue}); retry shortly", {"Retry-After": "1"})

    async def _score(self, model: Loaded, images: list[bytes], names: list[str]) -> list[dict]:
        """One result per image: those that fail the header check get their error here, the rest the model's."""
        results = [protocols.check_image(data, name, self.settings.max_pixels) for data, name in zip(images, names)]
        todo = [i for i, r in enumerate(results) if r is None]
        try:
            if todo:
                scored = await asyncio.wait_for(
                    self.batcher.submit(model.scorer, [images[i] for i in todo], [names[i] for i in todo]),
                    self.settings.deadline_s)
                for i, r in zip(todo, scored):
                    results[i] = r
        except QueueFull as e:
            raise RequestError(503, f"the server is busy ({e}); retry shortly", {"Retry-After": "1"}) from e
        except TimeoutError as e:
            raise RequestError(504, f"the model did not answer within {self.settings.deadline_s:g} s; the server is "
                                    "busy: retry, or send fewer images per request") from e
        protocols.check_results(results)
        return results

    @staticmethod
    def _answer(body: dict, model: Loaded) -> JSONResponse:
        return JSONResponse(body, headers={VERSION_HEADER: model.version} if model.version else None)

    # --- health and metadata ------------------------------------------------------------------------------------
    def _health(self) -> JSONResponse:
        current = self.live.current
        if current is not None:
            return JSONResponse({"status": "ready", "model": self.model_name, "version": current.version})
        if self.live.error:
            return JSONResponse({"status": "failed", "error": self.live.error}, status_code=503)
        return JSONResponse({"status": "loading", "model": self.model_name}, status_code=503)

    async def health(self, request: Request) -> Response:
        return self._health()

    async def live_(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def v2_ready(self, request: Request) -> Response:
        return JSONResponse({"ready": self.live.ready}, status_code=200 if self.live.ready else 503)

    async def v2_server(self, request: Request) -> Response:
        return JSONResponse({"name": "emotionet-au-server", "version": "1",
                             "extensions": ["binary_tensor_data", "model_repository_health"]})

    async def model_ready(self, request: Request) -> Response:
        self._check_name(request.path_params["name"])
        ready = self.live.ready
        return JSONResponse({"name": self.model_name, "ready": ready}, status_code=200 if ready else 503)

    async def v2_metadata(self, request: Request) -> Response:
        self._check_name(request.path_params["name"])
        model = self._model()
        return self._answer(protocols.v2_metadata(self.model_name, model.version,
                                                  getattr(model.scorer, "task", "au")), model)

    async def metrics(self, request: Request) -> Response:
        """Prometheus' text format: what the batcher did, and the live version."""
        b, current = self.batcher, self.live.current
        version = current.version if current is not None and current.version else ""
        lines = [
            "# HELP serve_batches_total Batches the model scored.", "# TYPE serve_batches_total counter",
            f"serve_batches_total {b.batches}",
            "# HELP serve_images_scored_total Images the model scored.", "# TYPE serve_images_scored_total counter",
            f"serve_images_scored_total {b.scored}",
            "# HELP serve_queue_images Images waiting for the model.", "# TYPE serve_queue_images gauge",
            f"serve_queue_images {b.queued}",
            "# HELP serve_model_swaps_total New versions swapped in.", "# TYPE serve_model_swaps_total counter",
            f"serve_model_swaps_total {self.live.swaps}",
            "# HELP serve_model_ready Whether a model is loaded and warmed.", "# TYPE serve_model_ready gauge",
            f'serve_model_ready{{version="{version}"}} {int(current is not None)}',
        ]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def card(self, request: Request) -> Response:
        """The live version's model card: JSON, or its Markdown at /model-card.md."""
        model = self._model()
        if model.card is None:
            raise RequestError(404, model.card_error)
        if request.url.path.endswith(".md"):
            return PlainTextResponse(model.card_markdown or "", media_type="text/markdown; charset=utf-8",
                                     headers={VERSION_HEADER: model.version} if model.version else None)
        return self._answer(model.card, model)

    # --- predictions ----------------------------------------------------------------------------------------------
    async def predict(self, request: Request) -> Response:
        """Vertex AI's and KServe V1's {"instances": [{"b64": ...}]}."""
        if "name" in request.path_params:
            self._check_name(request.path_params["name"])
        self._json_type(request)
        self._room()
        body = await self._body(request)
        images, names = protocols.parse_instances(body, self.settings.max_instances)
        model = self._model()
        results = await self._score(model, images, names)
        return self._answer(protocols.predictions(results, model.version), model)

    async def v2_infer(self, request: Request) -> Response:
        self._check_name(request.path_params["name"])
        header_length = request.headers.get(protocols.V2_HEADER_LENGTH)
        if header_length is None:
            self._json_type(request)
        self._room()
        body = await self._body(request)
        images, names, request_id = protocols.parse_v2(body, header_length, self.settings.max_instances)
        model = self._model()
        results = await self._score(model, images, names)
        return self._answer(protocols.v2_response(results, self.model_name, model.version, request_id), model)

    async def faces(self, request: Request) -> Response:
        """Raw image bytes in; what predict --json says of one image out."""
        protocols.check_image_content_type(request.headers.get("content-type"))
        self._room()
        body = await self._body(request)
        name = request.query_params.get("name", "body")
        model = self._model()
        (result,) = await self._score(model, [body], [name])
        describe = getattr(model.scorer, "describe", None)
        head = describe() if describe else {}
        return self._answer({**head, "model_name": self.model_name, "version": model.version, "images": [result]},
                            model)

    # --- the app --------------------------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        s = self.settings
        return [
            Route(s.health_route, self.health, methods=["GET"]),
            Route(s.predict_route, self.predict, methods=["POST"]),
            Route("/v1/models/{name}:predict", self.predict, methods=["POST"]),
            Route("/v1/models/{name}", self.model_ready, methods=["GET"]),
            Route("/v2", self.v2_server, methods=["GET"]),
            Route("/v2/health/live", self.live_, methods=["GET"]),
            Route("/v2/health/ready", self.v2_ready, methods=["GET"]),
            Route("/v2/models/{name}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/infer", self.v2_infer, methods=["POST"]),
            Route("/v2/models/{name}", self.v2_metadata, methods=["GET"]),
            Route(RAW_ROUTE, self.faces, methods=["POST"]),
            Route(CARD_ROUTE, self.card, methods=["GET"]),
            Route(CARD_ROUTE + ".md", self.card, methods=["GET"]),
            Route(METRICS_ROUTE, self.metrics, methods=["GET"]),
        ]


async def _request_error(request: Request, exc: RequestError) -> Response:
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers or None)


async def _http_error(request: Request, exc) -> Response:
    # Starlette's own 404 and 405 as JSON, saying what exists.
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no route {request.url.path}; see GET /health, POST /predict, /v1/faces, /v2/models/NAME/infer"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return JSONResponse({"error": detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"the server failed on this request ({type(exc).__name__}: {exc}); it goes on "
                                  "serving; report this with the request"}, status_code=500)


def create_app(settings, load: Callable[[str], Any], executor=None,
               on_fatal: Callable[[str], None] | None = None) -> Starlette:
    """The app for these settings. load(uri) makes a scorer (components.common.inference.Scorer in the CLI)."""
    from starlette.exceptions import HTTPException

    server = Server(settings, load, executor, on_fatal)
    app = Starlette(routes=server.routes(), lifespan=server.lifespan,
                    exception_handlers={RequestError: _request_error, HTTPException: _http_error,
                                        Exception: _unexpected})
    app.state.server = server
    return app
