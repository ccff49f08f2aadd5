"""A local Cloud Storage emulator (gcp-storage-emulator) on 127.0.0.1, in-process, for gs:// tests."""
from __future__ import annotations

import contextlib
import os
import socket

from components.common import storage


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gcs_emulator(bucket: str = "test-bucket"):
    """Serves an in-memory GCS on a free loopback port with `bucket` created; yields its URL.

    Sets STORAGE_EMULATOR_HOST (which google-cloud-storage and components.common.storage honour)
    and resets the cached client on the way in and out, so no test reaches a real endpoint.
    """
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}
    os.environ["STORAGE_EMULATOR_HOST"] = url
    os.environ["GOOGLE_CLOUD_PROJECT"] = "local-test"
    storage.reset_client()
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage.reset_client()
        server.stop()
