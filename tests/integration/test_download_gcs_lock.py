"""The lock on a gs:// download store (<prefix>/.lock, held on a lease), against the Cloud Storage emulator."""
from __future__ import annotations

import json
import logging
import threading
import time

import pytest

pytest.importorskip("gcp_storage_emulator")

from gcs_emulator import gcs_emulator  # noqa: E402

from components.common import storage  # noqa: E402
from components.download import gcslock, store  # noqa: E402
from components.download.store import StoreError  # noqa: E402

BUCKET = "lock-bucket"
PREFIX = f"gs://{BUCKET}/emotionet/downloads"
LOCK = f"{PREFIX}/.lock"
LEASE = 1.0  # seconds, for live holders: the heartbeat renews every 1/3 s
SHORT = 0.3  # the lease of dead or stalled holders, so that it runs out soon


@pytest.fixture(scope="module")
def emulator():
    with gcs_emulator(BUCKET) as url:
        yield url


@pytest.fixture
def gcs(emulator):
    """One emulator for the file (stopping one takes half a second), emptied after each test."""
    yield emulator
    for uri in list(storage.list_files(f"gs://{BUCKET}")):
        storage.delete(uri)


def holder() -> dict:
    return json.loads(storage.read_bytes(LOCK))


def _row(key: str) -> dict:
    """A ledger row of a failed fetch, as a run journals it."""
    return {"key": key, "url": f"http://x/{key}", "status": "failed", "error_class": "network", "attempts": 1,
            "first_attempt": "2024-01-01T00:00:00.000000Z", "last_attempt": "2024-01-01T00:00:00.000000Z",
            "message": ""}


def dead_holder_lock(lease: float = SHORT, run_id: str = "dead-run") -> int:
    """A lock object as a run that was then SIGKILLed left it: nobody renews it."""
    body = {"run_id": run_id, "host": "gone-host", "pid": 4242, "token": "t-dead", "acquired": "2026-01-01T00:00:00Z",
            "renewed": "2026-01-01T00:00:00Z", "expires": "2026-01-01T00:00:01Z", "lease_s": lease}
    generation = storage.create_if_absent(LOCK, json.dumps(body).encode())
    assert generation is not None
    return generation


def test_the_storage_helpers_honour_generations(gcs):
    uri = f"gs://{BUCKET}/x/obj"
    g1 = storage.create_if_absent(uri, b"one")
    assert g1 and storage.create_if_absent(uri, b"two") is None and storage.read_bytes(uri) == b"one"
    assert storage.replace_if_generation(uri, b"two", g1 + 1) is None
    g2 = storage.replace_if_generation(uri, b"two", g1)
    assert g2 and g2 != g1 and storage.read_versioned(uri)[:2] == (b"two", g2)
    assert storage.replace_if_generation(uri, b"three", g1) is None  # g1 is gone
    assert not storage.delete_if_generation(uri, g1) and storage.exists(uri)
    assert storage.delete_if_generation(uri, g2) and not storage.exists(uri)
    assert storage.read_versioned(uri) is None and not storage.delete_if_generation(uri, g2)
    assert storage.replace_if_generation(uri, b"x", g2) is None and not storage.exists(uri)


def test_second_lock_is_refused_while_the_first_is_held_then_acquired_after_release(gcs):
    first = gcslock.GcsLock(PREFIX, "the store", run_id="run-1", lease=LEASE).acquire()
    try:
        body = holder()
        assert body["run_id"] == "run-1" and body["lease_s"] == LEASE and body["pid"] > 0 and body["host"]
        with pytest.raises(StoreError) as e:
            gcslock.GcsLock(PREFIX, "the store", run_id="run-2", lease=LEASE).acquire()
        msg = str(e.value)
        assert msg.startswith(f"another download run is writing to the store {PREFIX} (it holds .lock since ")
        assert "run run-1" in msg and f"host {body['host']}" in msg and "expires" in msg
        assert msg.endswith(f"wait for it to finish, or delete {LOCK} if that run is dead")
        time.sleep(LEASE * 1.2)  # past the first lease: the heartbeat keeps it live
        with pytest.raises(StoreError, match="another download run"):
            gcslock.GcsLock(PREFIX, "the store", run_id="run-2", lease=LEASE).acquire()
    finally:
        first.release()
    assert not storage.exists(LOCK)
    with gcslock.GcsLock(PREFIX, "the store", run_id="run-2", lease=LEASE) as second:
        assert second.held and holder()["run_id"] == "run-2"
    assert not storage.exists(LOCK)


def test_heartbeat_renews_the_lease(gcs):
    with gcslock.GcsLock(PREFIX, run_id="run-1", lease=LEASE):
        _, g0, updated0 = storage.read_versioned(LOCK)
        first = holder()
        time.sleep(LEASE / 3 * 2.5)
        _, g1, updated1 = storage.read_versioned(LOCK)
        assert g1 != g0 and updated1 > updated0
        later = holder()
        assert later["acquired"] == first["acquired"] and later["expires"] >= first["expires"]


def test_a_stale_lock_of_a_dead_run_is_taken_over_with_a_warning(gcs, caplog):
    dead_holder_lock()
    with pytest.raises(StoreError, match="run dead-run, host gone-host, pid 4242"):
        gcslock.GcsLock(PREFIX, run_id="run-2", lease=LEASE).acquire()  # not yet expired
    time.sleep(SHORT + 0.1)
    with caplog.at_level(logging.WARNING, logger="components.download.gcslock"):
        with gcslock.GcsLock(PREFIX, run_id="run-2", lease=LEASE) as lock:
            assert lock.held and holder()["run_id"] == "run-2"
    assert any("took over the stale lock" in r.message and "dead-run" in r.message and "gone-host" in r.message
               for r in caplog.records)
    assert not storage.exists(LOCK)


def test_the_expiry_follows_the_lease_written_by_the_holder(gcs):
    dead_holder_lock(lease=30.0)  # a holder with a long lease
    time.sleep(SHORT + 0.1)  # past the taker's own (short) lease, not the holder's
    with pytest.raises(StoreError, match="another download run"):
        gcslock.GcsLock(PREFIX, run_id="run-2", lease=SHORT).acquire()


def test_two_runs_racing_for_a_stale_lock_exactly_one_wins(gcs, monkeypatch):
    stale = dead_holder_lock()
    time.sleep(SHORT + 0.1)
    # Both racers read the stale lock before either writes: the generation precondition picks one.
    barrier, seen = threading.Barrier(2, timeout=10), threading.local()
    real_read = storage.read_versioned

    def read_then_wait(uri):
        out = real_read(uri)
        if not getattr(seen, "once", False):
            seen.once = True
            assert out is not None and out[1] == stale
            barrier.wait()
        return out

    monkeypatch.setattr(storage, "read_versioned", read_then_wait)
    locks = [gcslock.GcsLock(PREFIX, run_id=f"racer-{i}", lease=LEASE) for i in range(2)]
    results: dict[int, object] = {}

    def race(i):
        try:
            results[i] = locks[i].acquire()
        except StoreError as e:
            results[i] = e

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    try:
        won = [i for i in range(2) if isinstance(results.get(i), gcslock.GcsLock)]
        lost = [i for i in range(2) if isinstance(results.get(i), StoreError)]
        assert len(won) == 1 and len(lost) == 1, results
        assert holder()["run_id"] == f"racer-{won[0]}"
        assert f"run racer-{won[0]}" in str(results[lost[0]])
    finally:
        for lock in locks:
            lock.release()
    assert not storage.exists(LOCK)


def test_a_holder_whose_lock_was_taken_over_notices_and_does_not_delete_the_new_lock(gcs):
    # A run stalled past its lease (as if stopped): its heartbeat does not run.
    stalled = gcslock.GcsLock(PREFIX, run_id="stalled", lease=SHORT).acquire()
    stalled._stop.set()
    stalled._thread.join()
    time.sleep(SHORT + 0.1)
    with gcslock.GcsLock(PREFIX, run_id="next", lease=LEASE):
        with pytest.raises(StoreError, match=r"lost its lock on the store .*run next on host .* took it over"):
            stalled.check()  # renews first: the precondition fails
        assert stalled.lost.is_set() and not stalled.held
        stalled.release()
        assert holder()["run_id"] == "next"
    assert not storage.exists(LOCK)


def test_the_heartbeat_notices_a_lock_that_was_deleted_and_taken(gcs):
    first = gcslock.GcsLock(PREFIX, run_id="first", lease=LEASE).acquire()
    storage.delete(LOCK)  # someone thought it dead and deleted it, as the message says to
    second = gcslock.GcsLock(PREFIX, run_id="second", lease=LEASE).acquire()
    try:
        assert first.lost.wait(LEASE * 2), "the heartbeat did not notice"
        assert "took it over" in first.lost_reason and "second" in first.lost_reason
        first.release()
        assert holder()["run_id"] == "second"
        second.check()  # still second's
    finally:
        first.release()
        second.release()
    assert not storage.exists(LOCK)


def test_gcs_stores_on_one_prefix_conflict_and_on_different_prefixes_do_not(gcs, monkeypatch, tmp_path):
    compacted = []
    monkeypatch.setattr(store.ledger, "compact", lambda root, *a, **k: compacted.append(root))
    a = store.open_store(PREFIX, "run-a")
    a.open()
    try:
        b = store.open_store(PREFIX + "/", "run-b")
        with pytest.raises(StoreError, match=f"another download run is writing to the store {PREFIX} .*run run-a"):
            b.open()
        other = store.open_store(f"gs://{BUCKET}/elsewhere", "run-c")
        other.open()
        other.close(compact=True)
        assert compacted == [f"gs://{BUCKET}/elsewhere"]
        assert holder()["run_id"] == "run-a"
    finally:
        a.close(compact=True)
    assert compacted[-1] == PREFIX and not storage.exists(LOCK)
    b = store.open_store(PREFIX, "run-b")  # free again
    b.open()
    b.close(compact=False)
    assert not storage.exists(LOCK) and len(compacted) == 2


def test_a_gcs_store_that_lost_its_lock_does_not_compact(gcs, monkeypatch):
    monkeypatch.setattr(gcslock, "DEFAULT_LEASE", LEASE)
    compacted = []
    monkeypatch.setattr(store.ledger, "compact", lambda root, *a, **k: compacted.append(root))
    a = store.open_store(PREFIX, "run-a")
    a.open()
    a.append([{"key": "k1", "url": "http://x/1", "status": "ok"}])  # held back until the next segment
    storage.delete(LOCK)
    b = store.open_store(PREFIX, "run-b")
    b.open()
    try:
        with pytest.raises(StoreError, match="lost its lock on the store"):
            a.close(compact=True)
        assert compacted == []  # a did not compact
        assert any("/journal/run-a-" in n for n in storage.list_files(PREFIX))  # its rows went up for the next run
        assert holder()["run_id"] == "run-b"  # a's close left b's lock alone
    finally:
        b.close(compact=True)
    assert compacted == [PREFIX] and not storage.exists(LOCK)


def test_a_compaction_never_overwrites_a_ledger_that_another_run_wrote_meanwhile(gcs, monkeypatch, tmp_path):
    import pyarrow.parquet as pq

    from components.common.ledger import LedgerError, read_ledger
    from components.download import ledger

    root = f"gs://{BUCKET}/other-store"

    storage.write_bytes(f"{root}/journal/run1-000000.jsonl", ledger.journal_line(_row("a")))
    assert ledger.compact(root)["total"] == 1
    storage.write_bytes(f"{root}/journal/run2-000000.jsonl", ledger.journal_line(_row("b")))
    theirs = str(tmp_path / "theirs.parquet")
    pq.write_table(ledger.rows_to_table([_row("a"), _row("z")]), theirs)

    real_fold = ledger.fold

    def racing_fold(*args, **kwargs):
        storage.upload_file(theirs, f"{root}/ledger.parquet")  # another run writes while this one merges
        return real_fold(*args, **kwargs)

    monkeypatch.setattr(ledger, "fold", racing_fold)
    with pytest.raises(LedgerError, match="rewritten by another run.*kept the journals"):
        ledger.compact(root)
    assert read_ledger(f"{root}/ledger.parquet")["key"].to_pylist() == ["a", "z"]  # theirs, untouched
    assert list(storage.list_files(f"{root}/journal")) == [f"{root}/journal/run2-000000.jsonl"]  # ours, kept
    monkeypatch.setattr(ledger, "fold", real_fold)
    assert ledger.compact(root)["total"] == 3  # the next compaction folds both in


def test_prepare_after_a_killed_run_folds_its_segments_and_keeps_the_uploaded_ledger(gcs, monkeypatch, tmp_path):
    from components.common.ledger import read_ledger
    from components.download import ledger

    storage.write_bytes(f"{PREFIX}/journal/run1-000000.jsonl", ledger.journal_line(_row("a")))
    assert ledger.compact(PREFIX)["total"] == 1
    # A killed run left segments behind: prepare folds them in and uploads a new ledger ...
    storage.write_bytes(f"{PREFIX}/journal/run2-000000.jsonl", ledger.journal_line(_row("b")) + ledger.journal_line(_row("c")))
    downloads = []
    real_download = storage.download_file
    monkeypatch.setattr(storage, "download_file", lambda *a, **k: downloads.append(a) or real_download(*a, **k))
    s = store.GcsStore(PREFIX, "run3")
    local = s.prepare(str(tmp_path))
    # ... and keeps the file it uploaded, instead of downloading it again.
    assert downloads == []
    assert read_ledger(local)["key"].to_pylist() == ["a", "b", "c"]
    assert storage.read_bytes(f"{PREFIX}/ledger.parquet") == open(local, "rb").read()
    assert not list(storage.list_files(f"{PREFIX}/journal"))
    # With no segments to fold, the ledger is downloaded.
    again = s.prepare(str(tmp_path / "again"))
    assert len(downloads) == 1 and read_ledger(again)["key"].to_pylist() == ["a", "b", "c"]
