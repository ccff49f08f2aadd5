"""The push step: copies a blessed model, its metrics and blessing into a new registry version, then moves LATEST."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import tempfile

from components.common import evaluation, registry, storage
from components.common.errors import StepRefusal
from components.common.model import LOGS_DIR, SAVED_MODEL_DIR
from components.push.params import SPEC


class PushError(StepRefusal):
    """A push that cannot be done; the message says what was found and what to do."""


def model_digest(model_dir: str) -> str:
    """sha256 over the model's files (paths and bytes), TensorBoard logs left out."""
    h = hashlib.sha256()
    prefix = model_dir.rstrip("/").rstrip(os.sep)
    for f in storage.list_files(model_dir):
        rel = f[len(prefix):].lstrip("/").lstrip(os.sep).replace(os.sep, "/")
        if rel.startswith(LOGS_DIR + "/"):
            continue
        h.update(rel.encode() + b"\0")
        if storage.is_gcs(f):
            h.update(storage.read_bytes(f))
        else:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def new_version(digest: str, now: datetime.datetime | None = None) -> str:
    """UTC time to the second, then the model's short digest: names sort in push order."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + digest[:8]


def read_blessing(evaluation_dir: str) -> dict:
    """blessing.json of the evaluation folder (components.common.evaluation), a problem with it as a PushError."""
    try:
        return evaluation.read_blessing(evaluation_dir)
    except evaluation.EvaluationError as e:
        raise PushError(str(e)) from e


def _copy_file(src: str, dst: str) -> None:
    """One file, local or gs:// on either side; the destination file appears whole."""
    if not storage.is_gcs(src):
        storage.upload_file(src, dst)
        return
    if not storage.is_gcs(dst):
        storage.download_file(src, dst)
        return
    with tempfile.TemporaryDirectory(prefix="push-") as tmp:
        local = os.path.join(tmp, "f")
        storage.download_file(src, local)
        storage.upload_file(local, dst)


def _copy_into(src_dir: str, version_uri: str, names: tuple[str, ...] | None = None) -> list[str]:
    """Copies every file of src_dir (or only `names`, where present) into the version; returns what was written."""
    prefix = src_dir.rstrip("/").rstrip(os.sep)
    written = []
    for f in storage.list_files(src_dir):
        rel = f[len(prefix):].lstrip("/").lstrip(os.sep).replace(os.sep, "/")
        # A marker brought along (a model re-pushed from a registry) would call the copy done too early.
        if rel == registry.PUSH_FILE or (names is not None and rel not in names):
            continue
        dst = storage.join(version_uri, rel)
        _copy_file(f, dst)
        written.append(dst)
    return written


def prune(root: str, keep: int) -> list[str]:
    """Deletes the complete versions beyond the newest `keep`, never the one LATEST names; returns the deleted names.

    Unfinished versions older than every kept one are debris of interrupted pushes and go too;
    newer unfinished ones may be a push in progress and stay.
    """
    if keep <= 0:
        return []
    versions = registry.list_versions(root)
    latest = registry.read_latest(root)
    complete = [v for v in versions if registry.is_complete(storage.join(root, v))]
    kept = set(complete[-keep:])
    if latest:
        kept.add(latest)
    if not kept:
        return []
    oldest_kept = min(kept)
    pruned = []
    for v in versions:
        if v in kept or (v not in complete and v > oldest_kept):
            continue
        storage.delete(storage.join(root, v))
        pruned.append(v)
    return pruned


def _write_record(output_dir: str | None, record: dict) -> None:
    if output_dir:
        storage.write_text(storage.join(output_dir, registry.PUSH_FILE), json.dumps(record, indent=2))


def run(
    model_dir: str,
    evaluation_dir: str,
    output_dir: str | None,
    destination: str = SPEC.defaults.destination,
    model_name: str = SPEC.defaults.model_name,
    force: bool = SPEC.defaults.force,
    keep: int = SPEC.defaults.keep,
    infra_validate: bool = SPEC.defaults.infra_validate,
    infra_image: str = SPEC.defaults.infra_image,
    version: str | None = None,
) -> dict:
    """Pushes a blessed model (or any, with force) as a new version; writes push.json to output_dir.

    An unblessed model is not pushed and is no error: the record says why. Nor is one that fails infra validation
    (components.push.infra: started in the serving code, here or in the Docker image `infra_image`, it must answer
    evaluate's canonical requests as evaluate's scorer did); LATEST then stays where it was. Returns the record.
    """
    if keep < 0:
        raise PushError(f"keep {keep} must be 0 (keep every version) or more")
    if not destination:
        raise PushError("no destination given: name a registry folder or gs://bucket/prefix")
    if not storage.exists(storage.join(model_dir, SAVED_MODEL_DIR, "saved_model.pb")):
        raise PushError(f"{model_dir} has no {SAVED_MODEL_DIR}/saved_model.pb: not a model folder written by train")
    blessing = read_blessing(evaluation_dir)
    root = registry.model_root(destination, model_name)
    record = {
        "pushed": False,
        "blessed": blessing["blessed"],
        "forced": bool(force),
        "reasons": list(blessing.get("reasons", [])),
        "destination": destination,
        "model_name": model_name,
        "model_root": root,
        "version": None,
        "uri": None,
        "previous": None,
        "pruned": [],
    }
    if not blessing["blessed"] and not force:
        record["message"] = "not pushed: the model is not blessed (push with force to override)"
        _write_record(output_dir, record)
        return record

    if infra_validate:
        from components.push import infra

        try:
            check = infra.validate(model_dir, evaluation_dir, image=infra_image)
        except infra.InfraUnavailable as e:  # no verdict on the model: refuse rather than push or not push it
            raise PushError(str(e)) from e
        record["infra_validation"] = check
        if not check["passed"]:
            record["reasons"].append(f"infra validation failed: {check['reason']}")
            record["message"] = f"not pushed: the model failed infra validation ({check['reason']})"
            _write_record(output_dir, record)
            return record

    previous = registry.read_latest(root)
    version = version or new_version(model_digest(model_dir))
    version_uri = storage.join(root, version)
    if registry.basename(version_uri) != version or version in (registry.LATEST, "."):
        raise PushError(f"version {version!r} must be one path segment")
    if next(iter(storage.list_files(version_uri)), None) is not None:
        if registry.is_complete(version_uri) or version == previous:
            raise PushError(f"{version_uri} already exists: a version is never overwritten; push as a new version")
        # The same model's earlier push died midway here; nothing ever read it, so it starts over.
        storage.delete(version_uri)

    files = _copy_into(model_dir, version_uri)
    files += _copy_into(evaluation_dir, version_uri, evaluation.EVALUATION_FILES)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    from components.push.card import write_card  # the model card: before the marker, so a whole version has one

    files += write_card(model_dir, evaluation_dir, blessing, model_name, version, version_uri, previous, now,
                        forced=bool(force) and not blessing["blessed"])
    marker = {
        "version": version,
        "model_name": model_name,
        "pushed_at": now,
        "source_model": model_dir,
        "source_evaluation": evaluation_dir,
        "blessed": blessing["blessed"],
        "forced": bool(force) and not blessing["blessed"],
        "previous": previous,
        "files": len(files),
        "host": socket.gethostname(),
    }
    # The marker, then LATEST, last: a reader that follows LATEST always finds a whole version.
    storage.write_text(storage.join(version_uri, registry.PUSH_FILE), json.dumps(marker, indent=2))
    storage.write_text(storage.join(root, registry.LATEST), version + "\n")
    record.update(pushed=True, version=version, uri=version_uri, previous=previous, files=len(files) + 1)
    record["message"] = f"pushed version {version} to {version_uri}"
    if not blessing["blessed"]:
        record["message"] += " (forced: not blessed)"
    record["pruned"] = prune(root, keep)
    _write_record(output_dir, record)
    return record


def describe(record: dict) -> str:
    """What a push did, in a few lines for the log and the terminal."""
    lines = [record.get("message", "")]
    if not record["pushed"]:
        lines += [f"  - {r}" for r in record["reasons"]]
    elif record.get("previous"):
        lines.append(f"  LATEST moved from {record['previous']} to {record['version']}")
    if record.get("pruned"):
        lines.append(f"  pruned old versions: {', '.join(record['pruned'])}")
    return "\n".join(lines)
