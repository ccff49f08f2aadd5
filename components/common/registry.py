"""The model registry (contract 6): versions, LATEST, the push record, resolving a model URI; and publish's record."""
from __future__ import annotations

import os
import posixpath

from components.common import storage
from components.common.errors import StepRefusal
from components.common.evaluation import BLESSING_FILE, METRICS_FILE
from components.common.model import MODEL_CONFIG_FILE, SAVED_MODEL_DIR

LATEST = "LATEST"
# The push record: push's output (what it did) and, inside a version, the completion marker, written
# after every other file of it: a version without it is a push that was interrupted, and nothing
# ever treats it as a model.
PUSH_FILE = "push.json"
# Written by publish after every file it copied: a reader that finds it knows the copy is whole.
PUBLISHED_FILE = "published.json"


class RegistryError(StepRefusal):
    """A registry or model URI that cannot be used; the message says what was found and what to do."""


def model_root(destination: str, model_name: str) -> str:
    """<destination>/<model_name>: where the versions and LATEST of one model live."""
    if not model_name or "/" in model_name or model_name in (".", ".."):
        raise RegistryError(f"model name {model_name!r} must be one non-empty path segment, e.g. au-detector")
    return storage.join(destination, model_name)


def basename(uri: str) -> str:
    uri = uri.rstrip("/")
    return posixpath.basename(uri) if storage.is_gcs(uri) else os.path.basename(uri)


def read_latest(root: str) -> str | None:
    """The version LATEST names, or None when nothing was pushed yet."""
    path = storage.join(root, LATEST)
    if not storage.exists(path):
        return None
    version = storage.read_text(path).strip()
    if not version:
        raise RegistryError(f"{path} is empty; it should hold the name of the live version")
    return version


def is_complete(version_uri: str) -> bool:
    return storage.exists(storage.join(version_uri, PUSH_FILE))


def list_versions(root: str) -> list[str]:
    """Every version folder under a model root (complete or not), oldest first (names sort by time)."""
    return storage.list_dirs(root)


def live_version(root: str) -> tuple[str, str] | None:
    """(version, uri) of the live model of a model root, or None when LATEST is absent."""
    version = read_latest(root)
    if version is None:
        return None
    uri = storage.join(root, version)
    if not is_complete(uri):
        raise RegistryError(
            f"{storage.join(root, LATEST)} names version {version}, but {uri} has no {PUSH_FILE}: "
            "the registry was changed by hand; point LATEST at a complete version"
        )
    return version, uri


def resolve_model(uri: str) -> tuple[str, str | None]:
    """(model folder, version or None) for a registry model root (follows LATEST), a pushed version, or a model folder."""
    uri = uri.rstrip("/") if len(uri) > 1 else uri
    if storage.exists(storage.join(uri, LATEST)):
        version, version_uri = live_version(uri)
        return version_uri, version
    if is_complete(uri):
        return uri, basename(uri)
    parent = uri.rsplit("/", 1)[0] if storage.is_gcs(uri) else os.path.dirname(uri)
    if parent and parent != uri and storage.exists(storage.join(parent, LATEST)):
        raise RegistryError(
            f"{uri} is a version whose push did not finish (no {PUSH_FILE}); use the model root "
            f"{parent} (it follows {LATEST}) or a complete version"
        )
    if storage.exists(storage.join(uri, SAVED_MODEL_DIR, "saved_model.pb")):
        return uri, None
    if list_versions(uri):
        raise RegistryError(
            f"{uri} has no {LATEST}: no push to it has finished yet; push a model first, or name a version folder"
        )
    raise RegistryError(
        f"{uri} is not a model: expected a registry model root with {LATEST} (<destination>/<model_name>), "
        f"a pushed version folder, or a model folder with {SAVED_MODEL_DIR}/saved_model.pb"
    )


def fetch_local(model_uri: str, workdir: str) -> str:
    """A local folder holding the model's saved_model/ and JSON files: model_uri itself when local."""
    if not storage.is_gcs(model_uri):
        return model_uri
    local = os.path.join(workdir, "model")
    prefix = model_uri.rstrip("/") + "/"
    for f in storage.list_files(model_uri):
        rel = f[len(prefix):]
        # TensorBoard logs and the Keras file are not needed to serve.
        if rel.startswith(SAVED_MODEL_DIR + "/") or rel in (MODEL_CONFIG_FILE, METRICS_FILE, BLESSING_FILE, PUSH_FILE):
            storage.download_file(f, os.path.join(local, *rel.split("/")))
    return local
