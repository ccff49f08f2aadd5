"""CLI of the model server: python -m components.serve --model REGISTRY_ROOT|VERSION [--port 8080]; pipeline.py serve.

The only place the server reads the environment: Vertex AI's AIP_* variables become the flags' defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Mapping

from components.common.cli import StepArgumentParser
from components.common.params import add_param_flag
from components.serve.params import SPEC, Settings, check

# Vertex AI's custom-container contract (cloud.google.com/vertex-ai/docs/predictions/custom-container-requirements)
ENVIRONMENT = {"model": "AIP_STORAGE_URI", "port": "AIP_HTTP_PORT", "predict_route": "AIP_PREDICT_ROUTE",
               "health_route": "AIP_HEALTH_ROUTE"}


def environment_defaults(environ: Mapping[str, str]) -> dict:
    """The flags' defaults that the AIP_* variables set; on Vertex AI (AIP_HTTP_PORT set) it listens on 0.0.0.0."""
    out = {}
    for name, var in ENVIRONMENT.items():
        value = environ.get(var, "").strip()
        if not value:
            continue
        if name == "port":
            if not value.isdigit():
                raise ValueError(f"{var} is {value!r}; expected a port number")
            out[name] = int(value)
            out["host"] = "0.0.0.0"  # the container's port is mapped from outside it
        else:
            out[name] = value
    return out


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """A flag per parameter of the declaration, the AIP_* variables as their defaults."""
    defaults = environment_defaults(environ)
    for p in SPEC.params:
        add_param_flag(parser, dataclasses.replace(p, default=defaults[p.name]) if p.name in defaults else p)


def build_parser(environ: Mapping[str, str]) -> StepArgumentParser:
    p = StepArgumentParser(prog="python -m components.serve", description=SPEC.description)
    add_arguments(p, environ)
    return p


def serve(settings) -> int:
    """Runs the server until it is stopped (Ctrl-C, SIGTERM) or its model cannot be loaded (exit 1)."""
    import uvicorn

    from components.common import inference
    from components.serve.app import create_app

    def load(uri: str):
        return inference.Scorer(uri, which_faces=settings.which_faces, batch_size=settings.max_batch,
                                threshold=settings.threshold or None)

    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        fatal.append(message)
        server.should_exit = True

    app = create_app(settings, load, on_fatal=on_fatal)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                            access_log=settings.access_log, limit_concurrency=settings.max_connections,
                            timeout_graceful_shutdown=max(5, int(settings.deadline_s)), server_header=False)
    server = uvicorn.Server(config)
    server.run()
    if fatal:
        print(f"serve: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    """The parsed flags -> checked settings -> the server (pipeline.py serve calls this too)."""
    from components.common import registry
    from components.common.cli import setup_logging
    from components.common.inference import quiet_libraries
    from components.serve.models import model_uri

    settings = Settings(**SPEC.values(args))
    problems = check(settings)
    if problems:
        print("serve: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:  # a wrong path is said at once, not after the server has started
        settings = dataclasses.replace(settings, model=model_uri(settings.model, settings.model_name))
        registry.resolve_model(settings.model)
    except registry.RegistryError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    quiet_libraries()
    setup_logging()
    return serve(settings)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        parser = build_parser(environ)
    except ValueError as e:
        print(f"serve: {e}", file=sys.stderr)
        return 2
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
