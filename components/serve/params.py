"""The model server's one declaration: its parameters (the CLI's flags and the Settings the app is made with)."""
from __future__ import annotations

import dataclasses

from components.common.params import Param, StepSpec

MIB = 1 << 20

SPEC = StepSpec(
    name="serve",
    description="Serves a pushed model over HTTP: Vertex AI's custom-container routes, KServe's Open Inference "
                "Protocol (V2, and V1's :predict) and raw image bytes; follows the registry's LATEST.",
    params=(
        Param("model", str, "", "Registry model root (<destination>/<model_name>, follows LATEST), a version folder "
                                "or a model folder; local or gs:// (AIP_STORAGE_URI sets the default).", pipeline=None),
        Param("model_name", str, "", "The name clients use in /v1/models/NAME and /v2/models/NAME ('' = the "
                                     "registry model root's folder name); with --model a registry destination, the "
                                     "model in it.", pipeline=None),
        Param("host", str, "127.0.0.1", "Address to listen on (0.0.0.0 when AIP_HTTP_PORT is set, as on Vertex AI).",
              pipeline=None),
        Param("port", int, 8080, "Port to listen on (AIP_HTTP_PORT sets the default).", pipeline=None),
        Param("predict_route", str, "/predict", "Vertex AI's prediction route (AIP_PREDICT_ROUTE sets the "
                                                "default).", pipeline=None),
        Param("health_route", str, "/health", "Vertex AI's health route (AIP_HEALTH_ROUTE sets the default).",
              pipeline=None),
        Param("which_faces", str, "all", "Score every face of an image, or only its largest.",
              choices=("all", "largest"), pipeline=None),
        Param("threshold", float, 0.0, "One threshold for every AU instead of the tuned ones stored with the model "
                                       "(0 = the stored ones).", pipeline=None),
        Param("max_batch", int, 32, "Most images the model scores at once (requests' images are batched "
                                    "together).", pipeline=None),
        Param("batch_window_ms", float, 0.0, "How long the first image of a batch waits for others to join it while "
                                             "the scorer has room for a batch (0: not at all; under load images queue "
                                             "while the batches in flight are scored, and form the next batch).",
              pipeline=None),
        Param("batches_in_flight", int, 2, "Batches scored at once: while one is in the model, the next has its "
                                           "faces found (1: one batch at a time).", pipeline=None),
        Param("max_queue", int, 128, "Most images waiting for the model; a request beyond it gets 503 with "
                                     "Retry-After.", pipeline=None),
        Param("max_instances", int, 64, "Most images in one request (413 beyond).", pipeline=None),
        Param("max_body_bytes", int, 16 * MIB, "Largest request body in bytes (413 beyond).", pipeline=None),
        Param("max_pixels", int, 64_000_000, "Most pixels (width x height) of one image: a decompression bomb gets "
                                             "413 before it is decoded.", pipeline=None),
        Param("deadline_s", float, 30.0, "Seconds a request may take to send its body (408 beyond), and then to "
                                         "wait for the model (504 beyond).", pipeline=None),
        Param("poll_s", float, 2.0, "Seconds between two reads of the registry's LATEST (0 = never: serve the "
                                    "first version only).", pipeline=None),
        Param("max_connections", int, 256, "Most open connections; uvicorn answers 503 beyond.", pipeline=None),
        Param("access_log", bool, False, "Log a line per request.", pipeline=None),
    ),
)

# Settings(model=..., port=..., ...): the declaration as a frozen dataclass, what the app is made with.
Settings = dataclasses.make_dataclass(
    "Settings", [(p.name, p.type, dataclasses.field(default=p.default)) for p in SPEC.params], frozen=True,
    namespace={"__doc__": "The server's settings, one field per parameter of SPEC (same name and default)."},
)


def check(settings) -> list[str]:
    """What is wrong with a set of settings, one sentence each (empty when they can be served with)."""
    problems = []
    if not settings.model:
        problems.append("no model: pass --model (a registry model root, a version or a model folder) or set "
                        "AIP_STORAGE_URI")
    if not 0 <= settings.port <= 65535:
        problems.append(f"--port {settings.port} is not a port number (0-65535)")
    for name in ("predict_route", "health_route"):
        if not getattr(settings, name).startswith("/"):
            problems.append(f"--{name.replace('_', '-')} {getattr(settings, name)!r} must start with /")
    if settings.predict_route == settings.health_route:
        problems.append(f"the predict and health routes are both {settings.predict_route}")
    for name in ("max_batch", "batches_in_flight", "max_queue", "max_instances", "max_body_bytes", "max_pixels",
                 "max_connections"):
        if getattr(settings, name) < 1:
            problems.append(f"--{name.replace('_', '-')} is {getattr(settings, name)}; expected 1 or more")
    if settings.max_instances > settings.max_queue:
        problems.append(f"--max-instances {settings.max_instances} is more than --max-queue {settings.max_queue}: "
                        "such a request could never be queued")
    if not 0 <= settings.threshold < 1:
        problems.append(f"--threshold {settings.threshold} is not a probability below 1 (0 = the tuned ones)")
    for name in ("batch_window_ms", "poll_s"):
        if getattr(settings, name) < 0:
            problems.append(f"--{name.replace('_', '-')} is negative")
    if settings.deadline_s <= 0:
        problems.append(f"--deadline-s {settings.deadline_s} must be more than 0")
    return problems
