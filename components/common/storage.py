"""Local folders and gs:// URIs behind one small API, so every step takes either (google-cloud-storage underneath)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

GCS_PREFIX = "gs://"


def is_gcs(uri: str) -> bool:
    return str(uri).startswith(GCS_PREFIX)


def split_gcs(uri: str) -> tuple[str, str]:
    """gs://bucket/a/b -> ("bucket", "a/b")."""
    if not is_gcs(uri):
        raise ValueError(f"{uri!r} is not a gs:// URI")
    rest = uri[len(GCS_PREFIX):]
    bucket, _, blob = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket; expected gs://BUCKET/PATH")
    return bucket, blob


def join(base: str, *parts: str) -> str:
    """Joins path parts with '/' for gs:// and os.path.join for local paths."""
    if is_gcs(base):
        out = base.rstrip("/")
        for p in parts:
            out += "/" + str(p).strip("/")
        return out
    return os.path.join(base, *parts)


_CLIENT = None


def gcs_client():
    """One client per process. STORAGE_EMULATOR_HOST (a local emulator) gets anonymous credentials."""
    global _CLIENT
    if _CLIENT is None:
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            _CLIENT = storage.Client(credentials=AnonymousCredentials(), project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"))
        else:
            _CLIENT = storage.Client()
    return _CLIENT


def reset_client() -> None:
    """Forget the cached client (tests that start an emulator call this)."""
    global _CLIENT
    _CLIENT = None


def _blob(uri: str):
    bucket, name = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(name)


def exists(uri: str) -> bool:
    if is_gcs(uri):
        return _blob(uri).exists()
    return os.path.exists(uri)


def read_bytes(uri: str) -> bytes:
    if is_gcs(uri):
        return _blob(uri).download_as_bytes()
    with open(uri, "rb") as f:
        return f.read()


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_bytes(uri: str, data: bytes) -> None:
    """Writes atomically: a reader sees the old file or the whole new one, never a part."""
    if is_gcs(uri):
        _blob(uri).upload_from_string(data)  # a GCS object appears whole or not at all
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would, so a step running
        # as another user (another container) can still read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def list_files(prefix: str) -> Iterator[str]:
    """Every file under prefix (recursively), as full URIs / paths, sorted."""
    if is_gcs(prefix):
        bucket, name = split_gcs(prefix)
        name = name.rstrip("/") + "/" if name else ""
        for blob in sorted(gcs_client().list_blobs(bucket, prefix=name), key=lambda b: b.name):
            if not blob.name.endswith("/"):
                yield f"{GCS_PREFIX}{bucket}/{blob.name}"
        return
    root = Path(prefix)
    if not root.exists():
        return
    for p in sorted(root.rglob("*")):
        if p.is_file():
            yield str(p)


def list_dirs(prefix: str) -> list[str]:
    """Names of the immediate sub-folders of prefix."""
    if is_gcs(prefix):
        bucket, name = split_gcs(prefix)
        name = name.rstrip("/") + "/" if name else ""
        it = gcs_client().list_blobs(bucket, prefix=name, delimiter="/")
        list(it)  # the prefixes are filled in as the pages are read
        return sorted(p[len(name):].rstrip("/") for p in it.prefixes)
    root = Path(prefix)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def delete(uri: str) -> None:
    """Deletes a file or a whole folder / prefix."""
    if is_gcs(uri):
        bucket, name = split_gcs(uri)
        blobs = list(gcs_client().list_blobs(bucket, prefix=name.rstrip("/") + "/"))
        single = _blob(uri)
        if single.exists():
            blobs.append(single)
        for b in blobs:
            b.delete()
        return
    if os.path.isdir(uri):
        shutil.rmtree(uri)
    elif os.path.exists(uri):
        os.unlink(uri)


# --- Conditional writes on one gs:// object (generation preconditions), for locks and the like ---
# Every object version has a generation number; a request made "if the generation is still N" fails
# with 412 Precondition Failed when someone else wrote or deleted the object since, and
# if_generation_match=0 means "only if no such object exists". These are gs:// only.


def _read_at_generation(uri: str, read):
    """(read(blob, generation), generation, updated) of a gs:// object, or None when there is none.

    read() downloads at that very generation (if_generation_match); a write in between makes it try
    again. `updated` is the server's time of that write (a timezone-aware datetime).
    """
    from google.api_core import exceptions as gexc

    bucket, name = split_gcs(uri)
    for _ in range(5):
        blob = gcs_client().bucket(bucket).get_blob(name)
        if blob is None:
            return None
        generation, updated = blob.generation, blob.updated  # a download resets them from its headers
        try:
            return read(blob, generation), generation, updated
        except (gexc.PreconditionFailed, gexc.NotFound):
            continue  # rewritten or deleted between the two requests: look again
    raise RuntimeError(f"{uri} keeps changing while being read")


def read_versioned(uri: str):
    """(bytes, generation, updated) of a gs:// object, or None when there is none; the bytes are
    those of that very generation."""
    return _read_at_generation(uri, lambda blob, generation: blob.download_as_bytes(if_generation_match=generation))


def create_if_absent(uri: str, data: bytes, content_type: str = "application/json") -> int | None:
    """Writes a gs:// object only if there is none; its generation, or None when one exists already."""
    from google.api_core import exceptions as gexc

    blob = _blob(uri)
    try:
        blob.upload_from_string(data, content_type=content_type, if_generation_match=0)
    except gexc.PreconditionFailed:
        return None
    return blob.generation


def replace_if_generation(uri: str, data: bytes, generation: int, content_type: str = "application/json") -> int | None:
    """Overwrites a gs:// object only if it is still at `generation`; the new generation, or None
    when it was written or deleted since."""
    from google.api_core import exceptions as gexc

    blob = _blob(uri)
    try:
        blob.upload_from_string(data, content_type=content_type, if_generation_match=int(generation))
    except gexc.PreconditionFailed:
        return None
    return blob.generation


def delete_if_generation(uri: str, generation: int) -> bool:
    """Deletes a gs:// object only if it is still at `generation`; False when it was rewritten or is gone."""
    from google.api_core import exceptions as gexc

    try:
        _blob(uri).delete(if_generation_match=int(generation))
    except (gexc.PreconditionFailed, gexc.NotFound):
        return False
    return True


def download_versioned(uri: str, local_path: str) -> int:
    """Downloads a gs:// object to local_path; returns the generation it holds, or 0 when there is
    no such object (nothing is written then). Pair it with upload_file_if_generation()."""
    Path(local_path).parent.mkdir(parents=True, exist_ok=True)
    got = _read_at_generation(
        uri, lambda blob, generation: blob.download_to_filename(local_path, if_generation_match=generation))
    return int(got[1]) if got else 0


def upload_file_if_generation(local_path: str, uri: str, generation: int) -> bool:
    """Uploads a local file to a gs:// object only if the object is still at `generation` (0: only if
    there is none); False when someone else wrote or deleted it since."""
    from google.api_core import exceptions as gexc

    try:
        _blob(uri).upload_from_filename(local_path, if_generation_match=int(generation))
    except gexc.PreconditionFailed:
        return False
    return True


def upload_file(local_path: str, uri: str) -> None:
    if is_gcs(uri):
        _blob(uri).upload_from_filename(local_path)
        return
    Path(uri).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{uri}.tmp-{os.getpid()}"
    shutil.copyfile(local_path, tmp)
    os.replace(tmp, uri)


def download_file(uri: str, local_path: str) -> None:
    Path(local_path).parent.mkdir(parents=True, exist_ok=True)
    if is_gcs(uri):
        _blob(uri).download_to_filename(local_path)
    else:
        shutil.copyfile(uri, local_path)


def copy_tree(src_dir: str, dst: str) -> list[str]:
    """Copies every file of a local folder or prefix under dst, keeping relative paths; returns the written URIs."""
    written = []
    src_root = src_dir.rstrip("/")
    for f in list_files(src_root):
        rel = f[len(src_root):].lstrip("/").lstrip(os.sep)
        target = join(dst, rel)
        if is_gcs(f) or is_gcs(target):
            if is_gcs(f):
                with tempfile.TemporaryDirectory() as tmp:
                    local = os.path.join(tmp, "f")
                    download_file(f, local)
                    upload_file(local, target)
            else:
                upload_file(f, target)
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
        written.append(target)
    return written


def local_copy(uri: str, workdir: str) -> str:
    """A local path holding uri's bytes: uri itself when local, a download into workdir when gs://."""
    if not is_gcs(uri):
        return uri
    local = os.path.join(workdir, os.path.basename(split_gcs(uri)[1]) or "object")
    download_file(uri, local)
    return local


REMOTE_RUNNERS = ("dataflowrunner", "flinkrunner", "sparkrunner", "portablerunner", "prismrunner")


def runs_remotely(beam_args: str) -> bool:
    """True when beam_args names a runner whose workers run on other machines."""
    import shlex

    args = shlex.split(beam_args or "")
    for i, a in enumerate(args):
        if a.startswith("--runner="):
            name = a.split("=", 1)[1]
        elif a == "--runner" and i + 1 < len(args):
            name = args[i + 1]
        else:
            continue
        return name.lower() in REMOTE_RUNNERS or name.lower() + "runner" in REMOTE_RUNNERS
    return False


def artifact_location(artifact, beam_args: str = "") -> str:
    """Where a Beam step reads or writes a KFP artifact: its local path, or its gs:// URI when the
    runner is remote (Dataflow workers can't see the pod's disk)."""
    uri = getattr(artifact, "uri", "") or ""
    if runs_remotely(beam_args) and is_gcs(uri):
        return uri
    return artifact.path
