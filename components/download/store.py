"""The download folders: the output folder a run writes, and the store (local folder or gs:// prefix) that outlives runs.

Both hold the same layout: `images/<key>.<format>`, `ledger.parquet`, and `journal/*.jsonl`, the
rows settled since the ledger was last compacted. A run writes its output folder as it goes
and copies each image and each journal batch to the store, so a run killed at any instant
loses nothing that it had settled.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import threading
import time
import uuid
from datetime import datetime, timezone

from components.common import ledger as contract
from components.common import storage
from components.common.errors import StepRefusal
from components.download import ledger

PARTIAL_DIR = ".partial"  # images being written; never read as images, emptied at the start of a run
LOCK_FILE = ".lock"


def new_run_id() -> str:
    """Sorts in time order, so journals are replayed in the order they were written."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class FolderLock:
    """An exclusive lock on a local folder for the length of a run; the kernel frees it if the run is killed."""

    def __init__(self, folder: str, what: str):
        self.folder, self.what = folder, what
        self._fd = None

    def __enter__(self):
        os.makedirs(self.folder, exist_ok=True)
        self._fd = os.open(os.path.join(self.folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._fd)
            self._fd = None
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(
                    f"another download run is writing to {self.what} {self.folder} (it holds {LOCK_FILE}); "
                    "wait for it to finish or choose another folder") from e
            raise
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        return False


class Journal:
    """Appends ledger rows as JSON lines to <folder>/journal/<run_id>.jsonl; flush() makes them durable."""

    def __init__(self, folder: str, run_id: str):
        os.makedirs(os.path.join(folder, ledger.JOURNAL_DIR), exist_ok=True)
        self.path = os.path.join(folder, ledger.JOURNAL_DIR, f"{run_id}.jsonl")
        self._f = open(self.path, "ab")

    def write(self, rows: list[dict]) -> None:
        self._f.write(b"".join(ledger.journal_line(r) for r in rows))

    def flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self.flush()
            self._f.close()


def clear_partial(folder: str) -> None:
    """Removes images half-written by a run that was killed: they were never renamed, so nothing names them."""
    shutil.rmtree(os.path.join(folder, PARTIAL_DIR), ignore_errors=True)
    os.makedirs(os.path.join(folder, PARTIAL_DIR), exist_ok=True)


def write_image(folder: str, key: str, fmt: str, data: bytes) -> str:
    """Writes images/<key>.<fmt> whole or not at all (a temp file in .partial/, then a rename)."""
    final = os.path.join(folder, contract.IMAGES_DIR, f"{key}.{fmt}")
    # One thread at a time works on a key, and .partial/ starts empty: the name cannot clash.
    tmp = os.path.join(folder, PARTIAL_DIR, f"{key}.{threading.get_ident()}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return final


def link_or_copy(src: str, folder: str, key: str, fmt: str) -> str:
    """Puts the file src at folder/images/<key>.<fmt> atomically: a hard link when both are on one disk, else a copy."""
    final = os.path.join(folder, contract.IMAGES_DIR, f"{key}.{fmt}")
    tmp = os.path.join(folder, PARTIAL_DIR, f"{key}.{threading.get_ident()}.link")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, final)
    return final


def prepare_folder(folder: str) -> None:
    """Makes images/ and empties .partial/; removes a ledger half-written by a run killed while compacting
    (it was never renamed into place, so the ledger.parquet beside it is whole)."""
    os.makedirs(os.path.join(folder, contract.IMAGES_DIR), exist_ok=True)
    clear_partial(folder)
    for name in os.listdir(folder):
        if name.startswith(contract.LEDGER_FILE + ".") and name.endswith(".tmp"):
            os.unlink(os.path.join(folder, name))


class LocalStore:
    """A store on a local (or mounted) disk: images are hard-linked in, the journal is appended and fsync'd."""

    def __init__(self, root: str, run_id: str):
        self.root = os.path.abspath(root)
        self.run_id = run_id
        self._lock = FolderLock(self.root, "the store")
        self._journal: Journal | None = None

    def open(self) -> None:
        self._lock.__enter__()
        prepare_folder(self.root)

    def prepare(self, workdir: str) -> str | None:
        """Folds journals a killed run left into the store's ledger; its path, or None when it has none."""
        ledger.fold_journals(self.root, workdir)
        path = os.path.join(self.root, contract.LEDGER_FILE)
        return path if os.path.exists(path) else None

    def get_image(self, key: str, fmt: str, size: int | None, folder: str) -> bool:
        src = os.path.join(self.root, contract.IMAGES_DIR, f"{key}.{fmt}")
        try:
            if size is not None and os.path.getsize(src) != size:
                return False
        except OSError:
            return False
        link_or_copy(src, folder, key, fmt)
        return True

    def put_image(self, path: str, key: str, fmt: str) -> None:
        link_or_copy(path, self.root, key, fmt)

    def append(self, rows: list[dict]) -> None:
        if self._journal is None:  # opened at the first rows, after prepare() has folded the older journals
            self._journal = Journal(self.root, self.run_id)
        self._journal.write(rows)
        self._journal.flush()

    def close(self, compact: bool = True) -> None:
        if self._journal is not None:
            self._journal.close()
        try:
            if compact:
                ledger.compact(self.root, verify_files=True)
        finally:
            self._lock.__exit__()


class GcsStore:
    """A store under a gs:// prefix: images are uploaded one object each (whole or not at all) and the
    journal goes up in segments, one object per batch, since an object cannot be appended to."""

    # A segment goes up when it holds this many rows or is this old, whichever comes first.
    SEGMENT_ROWS = 500
    SEGMENT_SECONDS = 10.0

    def __init__(self, prefix: str, run_id: str):
        self.root = prefix.rstrip("/")
        self.run_id = run_id
        self._pending: list[dict] = []
        self._since = time.monotonic()
        self._seq = 0
        self._lock = threading.Lock()
        from components.download.gcslock import GcsLock

        self._store_lock = GcsLock(self.root, "the store", run_id=run_id)  # <store>/.lock, held on a lease

    def open(self) -> None:
        storage.split_gcs(self.root)  # a bad URI fails here, before any work
        self._store_lock.acquire()

    def prepare(self, workdir: str) -> str | None:
        """Folds journal segments left by earlier runs into the store's ledger; a local copy of it, or None."""
        local = os.path.join(workdir, "store-ledger.parquet")
        if ledger.fold_journals(self.root, workdir, local_copy=local):
            return local  # the file it just uploaded: no need to download it again
        uri = storage.join(self.root, contract.LEDGER_FILE)
        if not storage.exists(uri):
            return None
        storage.download_file(uri, local)
        return local

    def get_image(self, key: str, fmt: str, size: int | None, folder: str) -> bool:
        from google.api_core import exceptions as gexc

        tmp = os.path.join(folder, PARTIAL_DIR, f"{key}.{threading.get_ident()}.download")
        try:
            storage.download_file(storage.join(self.root, contract.IMAGES_DIR, f"{key}.{fmt}"), tmp)
        except gexc.NotFound:
            return False
        if size is not None and os.path.getsize(tmp) != size:
            os.unlink(tmp)
            return False
        os.replace(tmp, os.path.join(folder, contract.IMAGES_DIR, f"{key}.{fmt}"))
        return True

    def put_image(self, path: str, key: str, fmt: str) -> None:
        storage.upload_file(path, storage.join(self.root, contract.IMAGES_DIR, f"{key}.{fmt}"))

    def append(self, rows: list[dict]) -> None:
        with self._lock:
            self._pending.extend(rows)
            if len(self._pending) >= self.SEGMENT_ROWS or time.monotonic() - self._since >= self.SEGMENT_SECONDS:
                self._upload()

    def _upload(self) -> None:
        if self._pending:
            name = storage.join(self.root, ledger.JOURNAL_DIR, f"{self.run_id}-{self._seq:06d}.jsonl")
            storage.write_bytes(name, b"".join(ledger.journal_line(r) for r in self._pending))
            self._seq += 1
            self._pending = []
        self._since = time.monotonic()

    def close(self, compact: bool = True) -> None:
        try:
            with self._lock:
                self._upload()
            if compact:
                self._store_lock.check()  # a run whose lock was taken over must not compact
                ledger.compact(self.root)
        finally:
            self._store_lock.release()


def open_store(uri: str, run_id: str):
    """The store for a --store value, or None for ""."""
    if not uri:
        return None
    if storage.is_gcs(uri):
        return GcsStore(uri, run_id)
    return LocalStore(uri, run_id)


class StoreError(StepRefusal):
    """A folder or store that cannot be used now; the message says which and what to do."""
