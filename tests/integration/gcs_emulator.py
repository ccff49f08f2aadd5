"""A local Cloud Storage emulator (gcp-storage-emulator) on 127.0.0.1, in-process, for gs:// tests."""
from __future__ import annotations

import contextlib
import os
import socket
import threading

from components.common import storage


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# gcp-storage-emulator ignores the ifGenerationMatch precondition (it writes, reads and deletes
# whatever the generation), and the gs:// store lock depends on it. Until it honours it, the
# handlers that take it on real GCS are wrapped here: the JSON API's uploads (media, multipart,
# the start of a resumable one), object reads and downloads, and deletes. Writes fail with 412
# unless the live object is at the named generation (0: there is none); reads and deletes of a
# missing object keep their 404, of another generation get 412.
_PRECONDITIONS_LOCK = threading.Lock()
_preconditions_patched = False


def _object_name(request):
    params = request.params or {}
    if params.get("object_id"):
        return params["object_id"]
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        return (data.get("meta") if isinstance(data.get("meta"), dict) else data).get("name")
    return None


def _with_generation_match(handler, writes: bool):
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound

    def guarded(request, response, store, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        name = _object_name(request) if wanted else None
        if not wanted or not name:
            return handler(request, response, store, *args, **kwargs)
        with _PRECONDITIONS_LOCK:  # the check and the write as one step
            try:
                current = str(store.get_file_obj(request.params["bucket_name"], name)["generation"])
            except NotFound:
                current = None
            if current is None and not writes:
                return handler(request, response, store, *args, **kwargs)  # its own 404
            if (current or "0") != wanted[0]:
                msg = "At least one of the pre-conditions you specified did not hold."
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": msg,
                                         "errors": [{"domain": "global", "reason": "conditionNotMet", "message": msg}]}})
                return None
            return handler(request, response, store, *args, **kwargs)

    guarded.__wrapped__ = handler
    return guarded


def honour_generation_preconditions() -> None:
    """Makes the emulator's object handlers check ifGenerationMatch (once per process)."""
    global _preconditions_patched
    with _PRECONDITIONS_LOCK:
        if _preconditions_patched:
            return
        from gcp_storage_emulator import server as emu_server
        from gcp_storage_emulator.handlers import objects

        wrapped = {}
        for name, writes in (("insert", True), ("get", False), ("download", False), ("delete", False)):
            original = getattr(objects, name)
            wrapped[original] = _with_generation_match(original, writes)
            setattr(objects, name, wrapped[original])  # the router's fallback for uploads looks it up here
        for _regex, by_method in emu_server.HANDLERS:  # the routes hold the functions themselves
            for method, fn in list(by_method.items()):
                if fn in wrapped:
                    by_method[method] = wrapped[fn]
        _preconditions_patched = True


@contextlib.contextmanager
def gcs_emulator(bucket: str = "test-bucket"):
    """Serves an in-memory GCS on a free loopback port with `bucket` created; yields its URL.

    Sets STORAGE_EMULATOR_HOST (which google-cloud-storage and components.common.storage honour)
    and resets the cached client on the way in and out, so no test reaches a real endpoint.
    """
    from gcp_storage_emulator.server import create_server

    honour_generation_preconditions()
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
