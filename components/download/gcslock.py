"""An exclusive lock on a gs:// prefix for the length of a run: the object <prefix>/.lock, held on a lease.

Cloud Storage has no flock, so the lock is an object written with generation preconditions:

* acquire: create <prefix>/.lock only if there is none (if_generation_match=0). Its JSON body names
  the holder (run id, host, pid, when acquired, lease length, when it expires unless renewed).
* heartbeat: the holder rewrites it every lease/3 seconds, only if it is still at the generation
  the holder last wrote (if_generation_match=<ours>).
* a holder that was SIGKILLed stops renewing. Once its lease has run out, the next run takes the
  lock over by rewriting it at the stale generation (if_generation_match=<stale>), so of two runs
  racing for a stale lock exactly one wins; the other finds a live lock and is refused.
* release: delete it only if it is still at our generation; another run's lock is never deleted.

If a renewal finds the lock rewritten or gone (it was taken over while this run was stalled, or
someone deleted it), the lock is *lost*: `lost` is set, and check() raises, so the holder stops
before doing what the lock protects (the store's compaction of its journals into the ledger).

Expiry is judged by the server's clock, not the holder's: a lock expires `lease_s` (from its body)
after the server's `updated` time of its last write, compared with the judging host's clock. A live
holder rewrites it every lease/3, so a host's clock may be off from Cloud Storage's by up to about
two thirds of a lease before a live lock could be taken for a stale one. The times written in the
body are the holder's own clock, for people to read.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

from components.common import storage

LOCK_NAME = ".lock"
DEFAULT_LEASE = 600.0  # seconds; read when a lock is made, so a test can shorten it
_ATTEMPTS = 5  # acquire: rounds of create / read / take over before giving up

_LOG = logging.getLogger(__name__)


def _store_error(message: str) -> Exception:
    # Callers catch components.download.store.StoreError, as for the local store's lock; imported
    # here, not at the top, since store.py is what uses this module.
    from components.download.store import StoreError

    return StoreError(message)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class GcsLock:
    """The lock on `prefix_uri` (a gs:// prefix); `what` names it in messages ("the store").

    Use as a context manager, or acquire() / release(). While held, a daemon thread renews the lease.
    """

    def __init__(self, prefix_uri: str, what: str = "the store", run_id: str = "", lease: float | None = None):
        self.prefix = prefix_uri.rstrip("/")
        self.uri = storage.join(self.prefix, LOCK_NAME)
        self.what = what
        self.run_id = run_id
        self.lease = float(DEFAULT_LEASE if lease is None else lease)
        if self.lease <= 0:
            raise ValueError(f"lease must be positive, got {self.lease}")
        self.lost = threading.Event()
        self.lost_reason = ""
        self._token = uuid.uuid4().hex  # tells our own writes from anyone else's
        self._generation: int | None = None
        self._acquired: datetime | None = None
        self._last_ok = 0.0  # time.monotonic() when the last write that succeeded was sent
        self._mutex = threading.Lock()  # one write of the lock object at a time (heartbeat vs. check)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- public ---
    @property
    def held(self) -> bool:
        return self._generation is not None and not self.lost.is_set()

    def acquire(self) -> "GcsLock":
        if self._generation is not None:
            raise RuntimeError(f"{self.uri} is already held by this lock")
        self._acquired = datetime.now(timezone.utc)
        for _ in range(_ATTEMPTS):
            sent = time.monotonic()
            generation = storage.create_if_absent(self.uri, self._body())
            if generation is not None:
                return self._won(generation, sent)
            current = storage.read_versioned(self.uri)
            if current is None:
                continue  # released between the two requests: try again
            data, generation, updated = current
            holder = _parse(data)
            if holder.get("token") == self._token:
                return self._won(generation, sent)  # our own create, retried after its reply was lost
            expires = updated + timedelta(seconds=_lease_of(holder, self.lease))
            if datetime.now(timezone.utc) < expires:
                raise _store_error(
                    f"another download run is writing to {self.what} {self.prefix} (it holds {LOCK_NAME} since "
                    f"{holder.get('acquired', '?')}: run {holder.get('run_id') or '?'}, host {holder.get('host', '?')}, "
                    f"pid {holder.get('pid', '?')}; its lease expires {_iso(expires)} unless renewed); wait for it "
                    f"to finish, or delete {self.uri} if that run is dead")
            sent = time.monotonic()
            taken = storage.replace_if_generation(self.uri, self._body(), generation)
            if taken is not None:
                _LOG.warning(
                    "took over the stale lock %s: run %s (host %s, pid %s, since %s) stopped renewing it; "
                    "its lease ran out at %s", self.uri, holder.get("run_id") or "?", holder.get("host", "?"),
                    holder.get("pid", "?"), holder.get("acquired", "?"), _iso(expires))
                return self._won(taken, sent)
            # Another run renewed it or took it over first: look again.
        raise _store_error(f"could not take the lock {self.uri}: it kept changing hands; try again")

    def check(self, renew: bool = True) -> None:
        """Raises StoreError if the lock was lost. With renew, first renews it, so what follows
        starts with a whole lease and with the lock known to be ours right now."""
        if renew and self._generation is not None and not self.lost.is_set():
            self._renew()
        if self._generation is None and not self.lost.is_set():
            raise RuntimeError(f"{self.uri} is not held")
        if self.lost.is_set():
            raise _store_error(
                f"this download run lost its lock on {self.what} {self.prefix} ({self.lost_reason}), so it "
                "stopped writing to it; what it settled stays in its journal for the next run")

    def release(self) -> None:
        """Stops the heartbeat and deletes the lock if it is still ours. Never raises for a lock that
        cannot be deleted: it then runs out on its own."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        with self._mutex:
            generation, self._generation = self._generation, None
        if generation is None:
            return
        try:
            if not storage.delete_if_generation(self.uri, generation) and not self.lost.is_set():
                _LOG.warning("%s was no longer this run's at release; left it as it is", self.uri)
        except Exception as e:  # noqa: BLE001 - the run's own outcome matters more; the lease runs out
            _LOG.warning("could not delete %s (%s); it expires by itself within %.0f s", self.uri, e, self.lease)

    def __enter__(self) -> "GcsLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    # --- inside ---
    def _body(self) -> bytes:
        now = datetime.now(timezone.utc)
        return json.dumps({
            "run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "token": self._token,
            "acquired": _iso(self._acquired or now), "renewed": _iso(now), "lease_s": self.lease,
            "expires": _iso(now + timedelta(seconds=self.lease)),
        }, sort_keys=True).encode()

    def _won(self, generation: int, sent: float) -> "GcsLock":
        self._generation, self._last_ok = generation, sent
        self.lost.clear()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"gcs-lock-heartbeat {self.uri}", daemon=True)
        self._thread.start()
        return self

    def _lose(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()
        _LOG.error("lost the lock %s: %s; this run stops writing to %s", self.uri, reason, self.prefix)

    def _beat(self) -> None:
        interval = self.lease / 3
        while not self._stop.wait(interval):
            ok = self._renew()
            if self.lost.is_set():
                return
            interval = self.lease / 3 if ok else self.lease / 10  # after a failed renewal, try again soon

    def _renew(self) -> bool:
        with self._mutex:
            if self._generation is None or self.lost.is_set():
                return False
            sent = time.monotonic()
            try:
                new = storage.replace_if_generation(self.uri, self._body(), self._generation)
                if new is None:  # rewritten or deleted since our last write, or our own retried write
                    current = storage.read_versioned(self.uri)
                    if current is not None and _parse(current[0]).get("token") == self._token:
                        new = current[1]
                    else:
                        holder = _parse(current[0]) if current is not None else {}
                        self._lose("it was deleted" if current is None else
                                   f"run {holder.get('run_id') or '?'} on host {holder.get('host', '?')} "
                                   f"took it over after this run's lease ran out")
                        return False
            except Exception as e:  # noqa: BLE001 - a network error: keep the lease while it lasts
                if time.monotonic() - self._last_ok > self.lease * 0.75:
                    self._lose(f"it could not be renewed for {time.monotonic() - self._last_ok:.0f} s ({e})")
                else:
                    _LOG.warning("could not renew %s (%s); trying again", self.uri, e)
                return False
            self._generation, self._last_ok = new, sent
            return True


def _parse(data: bytes) -> dict:
    try:
        body = json.loads(data)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _lease_of(holder: dict, default: float) -> float:
    try:
        lease = float(holder["lease_s"])
    except (KeyError, TypeError, ValueError):
        return default
    return lease if lease > 0 else default
