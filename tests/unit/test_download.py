"""Unit tests of the download step: the image check, error classes, retries, the ledger, resume and the store.

No network and no sleeps: the engine runs against a scripted fake fetcher (backoff 0), and the
fetcher's own checks are exercised on URLs it refuses before connecting.
"""
import email.utils
import hashlib
import http.client
import io
import itertools
import json
import os
import random
import socket
import ssl
import struct
import threading
import types
import zlib
from collections import Counter
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from urllib3 import exceptions as u3e

from components.common import ledger as contract
from components.common.labels import image_key
from components.download import fetch, ledger, logic, store
from components.download.__main__ import main as download_main
from components.download.fetch import Outcome


# --- helpers -----------------------------------------------------------------------------------

def image(fmt="JPEG", size=(40, 30), color=(200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


JPEG = image()


def write_manifest(folder, urls, rows=True) -> str:
    os.makedirs(folder, exist_ok=True)
    df = pd.DataFrame({"key": [image_key(u) for u in urls], "url": urls})
    if rows:
        df["row"] = range(2, len(urls) + 2)
    df.to_parquet(os.path.join(folder, "manifest.parquet"))
    return str(folder)


def read_ledger(out) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(out, "ledger.parquet")).set_index("url")


class FakeFetcher:
    """Answers by the URL's path, attempt by attempt; counts the attempts per URL.

    /ok/*            an image                 /404/*      HTTP 404 every time
    /flaky/N/*       network error N times, then the image
    /down/*          HTTP 503 every time      /ra/S/*     HTTP 429 with Retry-After S once, then the image
    /html/*          a page, not an image
    """

    calls: Counter = Counter()
    lock = threading.Lock()

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.requests = 0

    def fetch(self, url):
        with self.lock:
            self.calls[url] += 1
            n = self.calls[url]
            self.requests += 1
        parts = url.split("/")[3:]
        kind = parts[0]
        if kind == "ok" or (kind == "flaky" and n > int(parts[1])) or (kind == "ra" and n > 1):
            return Outcome("ok", "", 200, body=JPEG, fmt="jpg", width=40, height=30)
        if kind == "flaky":
            return Outcome("network", "connection broke", None)
        if kind == "404":
            return Outcome("http_404", "HTTP 404 Not Found", 404)
        if kind == "down":
            return Outcome("http_5xx", "HTTP 503 Service Unavailable", 503)
        if kind == "ra":
            return Outcome("http_4xx", "HTTP 429 Too Many Requests", 429, retry_after=float(parts[1]))
        if kind == "html":
            return Outcome("not_image", "an HTML/XML page, not an image", 200)
        raise AssertionError(url)

    def close(self):
        pass

    def abort(self):
        pass


@pytest.fixture
def fake(monkeypatch):
    FakeFetcher.calls = Counter()
    monkeypatch.setattr(logic, "Fetcher", FakeFetcher)
    return FakeFetcher


def run(manifest, out, **kw):
    kw.setdefault("workers", 4)
    kw.setdefault("backoff", 0.0)
    kw.setdefault("progress", False)
    kw.setdefault("print_table", False)
    return logic.run(manifest, str(out), **kw)


U = "http://fake.test"


# --- the image check ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("BMP", "bmp"), ("WEBP", "webp")])
def test_inspect_image_reads_format_from_magic_bytes(fmt, ext):
    assert fetch.inspect_image(image(fmt, (33, 21)), 10_000) == (ext, 33, 21)


@pytest.mark.parametrize("body,words", [
    (b"", "empty"),
    (b"  <!DOCTYPE html><html><body>gone</body></html>", "HTML"),
    (bytes(range(256)), "undecodable"),
    (image("TIFF"), "TIFF"),
    (JPEG[: len(JPEG) // 2], "jpg"),
    (image("PNG", (64, 64))[:-40], "png"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 50, "jpg"),
])
def test_inspect_image_refuses_what_does_not_decode(body, words):
    with pytest.raises(fetch.ImageProblem) as e:
        fetch.inspect_image(body, 10_000_000)
    assert e.value.error_class == "not_image"
    assert words in e.value.message


def _png_header(width, height) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_from_its_header():
    with pytest.raises(fetch.ImageProblem) as e:
        fetch.inspect_image(_png_header(100_000, 100_000), 50_000_000)
    assert e.value.error_class == "too_large"
    with pytest.raises(fetch.ImageProblem) as e:
        fetch.inspect_image(image("PNG", (100, 100)), 5_000)
    assert e.value.error_class == "too_large" and "10000 pixels" in e.value.message


# --- classification ------------------------------------------------------------------------------

def _chain(outer, inner):
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


@pytest.mark.parametrize("exc,cls", [
    (u3e.NameResolutionError("h", None, socket.gaierror(-2, "Name or service not known")), "dns"),
    (_chain(u3e.NewConnectionError(None, "Failed to establish"), ConnectionRefusedError(111, "refused")), "connection_refused"),
    (u3e.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")), "connection_reset"),
    (u3e.ProtocolError("Connection aborted.", http.client.RemoteDisconnected("closed")), "connection_reset"),
    (u3e.ConnectTimeoutError(None, "timed out"), "timeout"),
    (u3e.ReadTimeoutError(None, "/x", "Read timed out."), "timeout"),
    (u3e.SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed")), "tls"),
    (u3e.SSLError(ssl.SSLError(1, "wrong version number")), "tls"),
    (u3e.ProtocolError("Connection broken", http.client.IncompleteRead(b"ab", 10)), "network"),
    (u3e.LocationParseError("http://["), "invalid_url"),
    (fetch.PrivateAddressRefused("10.0.0.1 refused"), "invalid_url"),
    (_chain(u3e.NewConnectionError(None, "Failed"), OSError(101, "Network is unreachable")), "network"),
    (RuntimeError("odd"), "network"),
])
def test_classify_exception(exc, cls):
    assert fetch.classify_exception(exc)[0] == cls


@pytest.mark.parametrize("status,cls", [(404, "http_404"), (403, "http_4xx"), (410, "http_4xx"), (429, "http_4xx"),
                                        (500, "http_5xx"), (503, "http_5xx"), (101, "network")])
def test_classify_status(status, cls):
    assert fetch.classify_status(status) == cls


def test_transient_classes_follow_the_contract():
    for cls in ("http_5xx", "timeout", "connection_reset", "connection_refused", "network", "dns"):
        assert contract.is_transient(cls)
    for cls in ("ok", "http_404", "http_4xx", "redirect", "tls", "not_image", "too_large", "invalid_url"):
        assert not contract.is_transient(cls, 403)
    assert contract.is_transient("http_4xx", 429) and contract.is_transient("http_4xx", 408)
    assert set(contract.ERROR_CLASSES) >= contract.TRANSIENT_CLASSES


def test_parse_retry_after():
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert fetch.parse_retry_after("120") == 120.0
    assert fetch.parse_retry_after(" 1.5 ") == 1.5
    assert fetch.parse_retry_after(email.utils.format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert fetch.parse_retry_after(email.utils.format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert fetch.parse_retry_after("-5") == 0.0
    for bad in (None, "", "soon", "nan"):
        assert fetch.parse_retry_after(bad) is None


def test_backoff_is_exponential_with_full_jitter():
    rng = random.Random(0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 10.0), (30, 10.0)):
        delays = [fetch.backoff_delay(attempt, 1.0, 10.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # spread over the whole range


def test_addresses():
    assert not fetch.is_public_address("127.0.0.1") and not fetch.is_public_address("10.1.2.3")
    assert not fetch.is_public_address("169.254.169.254") and not fetch.is_public_address("::1")
    assert not fetch.is_public_address("::ffff:192.168.0.1") and not fetch.is_public_address("fe80::1%eth0")
    assert fetch.is_public_address("93.184.216.34") and fetch.is_public_address("2606:4700::1111")
    assert fetch.is_reserved_invalid("a.b.invalid") and fetch.is_reserved_invalid("X.INVALID.")
    assert not fetch.is_reserved_invalid("invalid.example.com")


def _fetcher(allow_private=True):
    return fetch.Fetcher(per_host=2, timeout=1.0, deadline=2.0, max_bytes=1000, max_pixels=1000, max_redirects=2,
                         allow_private=allow_private, user_agent="test")


@pytest.fixture
def no_resolver(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError(f"the resolver was asked: {a}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("url,cls", [
    ("ftp://example.com/a.jpg", "invalid_url"), ("file:///etc/passwd", "invalid_url"), ("example.com/a.jpg", "invalid_url"),
    ("http://", "invalid_url"), ("http://[::1/a", "invalid_url"), ("http://a b/c", "invalid_url"), ("", "invalid_url"),
    ("http://x:99999/", "invalid_url"), ("http://photos.invalid/a.jpg", "dns"), ("https://A.B.INVALID./x", "dns"),
])
def test_fetcher_settles_bad_urls_without_any_query(no_resolver, url, cls):
    f = _fetcher(allow_private=False)
    try:
        out = f.fetch(url)
    finally:
        f.close()
    assert out.error_class == cls and out.message and f.requests == 0


def test_private_addresses_are_refused_when_asked(monkeypatch):
    answers = {"intranet.example": "192.168.1.5", "metadata.example": "169.254.169.254", "public.example": "93.184.216.34"}
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda host, port, *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))])
    f = _fetcher(allow_private=False)
    try:
        for url in ("http://10.0.0.7/a.jpg", "http://127.0.0.1:8080/a.jpg", "http://[::1]/a.jpg",
                    "http://intranet.example/a.jpg", "http://metadata.example/latest"):
            out = f.fetch(url)
            assert out.error_class == "invalid_url" and "allow_private is off" in out.message, url
        assert f._check_url("http://public.example/a.jpg")[1] == "public.example"
        assert f.requests == 0
    finally:
        f.close()


# --- the ledger ---------------------------------------------------------------------------------------

def row(key, last, status="failed", cls="network", **kw):
    return {"key": key, "url": f"http://x/{key}", "status": status, "error_class": cls, "attempts": 1,
            "first_attempt": "2024-01-01T00:00:00.000000Z", "last_attempt": last, "message": "", **kw}


def test_latest_per_key_keeps_the_newest_row():
    old = ledger.rows_to_table([row("a", "2024-01-02T00:00:00.000000Z"), row("b", "2024-01-05T00:00:00.000000Z")])
    new = ledger.rows_to_table([row("a", "2024-01-03T00:00:00.000000Z", "ok", "ok"),
                                row("b", "2024-01-04T00:00:00.000000Z", "ok", "ok")])
    t = ledger.latest_per_key([old, new]).to_pydict()
    assert t["key"] == ["a", "b"] and t["status"] == ["ok", "failed"]
    # On a tie the later table wins.
    tie = ledger.latest_per_key([old, ledger.rows_to_table([row("a", "2024-01-02T00:00:00.000000Z", "ok", "ok")])])
    assert tie.to_pydict()["status"][0] == "ok"
    assert ledger.latest_per_key([]).num_rows == 0


def test_a_journal_cut_by_a_kill_loses_only_its_last_line():
    lines = b"".join(ledger.journal_line(row(k, "2024-01-01T00:00:00.000000Z")) for k in "abc")
    cut = lines + b'{"key": "d", "url": "http://x/d", "sta'
    assert ledger.read_journal(cut).to_pydict()["key"] == ["a", "b", "c"]
    # A line damaged in the middle (a disk error, an editor) costs that line only.
    damaged = lines.replace(b'"key":"b"', b'"key":"b', 1) + ledger.journal_line(row("e", "2024-01-01T00:00:00.000000Z"))
    assert ledger.read_journal(damaged).to_pydict()["key"] == ["a", "c", "e"]
    assert ledger.read_journal(b"").num_rows == 0


def test_compact_folds_journals_keeps_keys_and_verifies_files(tmp_path):
    root = str(tmp_path)
    os.makedirs(tmp_path / "images")
    (tmp_path / "images" / "a.jpg").write_bytes(b"12345")
    j = store.Journal(root, store.new_run_id())
    j.write([row("a", "2024-01-01T00:00:00.000000Z", "ok", "ok", bytes=5, format="jpg"),
             row("b", "2024-01-01T00:00:00.000000Z", "ok", "ok", bytes=5, format="jpg"),  # its file is missing
             row("c", "2024-01-01T00:00:00.000000Z"), row("z", "2024-01-01T00:00:00.000000Z")])
    j.close()
    keep = str(tmp_path / "keep.parquet")
    pq.write_table(pa.table({"key": ["a", "b", "c"]}), keep)
    s = ledger.compact(root, keep=keep, verify_files=True)
    assert (s["total"], s["ok"], s["counts"]["network"]) == (2, 1, 1)
    assert os.listdir(tmp_path / "journal") == []
    assert contract.read_ledger(os.path.join(root, "ledger.parquet")).to_pydict()["key"] == ["a", "c"]


def test_summary_counts_and_table():
    t = ledger.rows_to_table([row("a", "t", "ok", "ok"), row("b", "t", "ok", "ok"), row("c", "t", cls="http_404"),
                              row("d", "t", cls="timeout"), row("e", "t", cls="http_4xx", http_status=429)])
    s = ledger.summarize(t)
    assert (s["total"], s["ok"], s["failed"], s["transient_failed"]) == (5, 2, 3, 2)
    assert s["counts"]["http_404"] == 1 and s["shares"]["ok"] == pytest.approx(0.4)
    assert set(s["counts"]) == set(contract.ERROR_CLASSES)
    text = ledger.format_table(s)
    assert "error class" in text and "http_404" in text and "40.00%" in text and "total" in text
    assert "tls" not in text  # classes that never happened are left out of the table


# --- the scheduler --------------------------------------------------------------------------------------

def test_scheduler_bounds_the_urls_in_flight():
    sched = logic._Scheduler(capacity=2)
    assert sched.submit(logic._Task("a", "u")) and sched.submit(logic._Task("b", "u"))
    entered = threading.Event()
    t = threading.Thread(target=lambda: (sched.submit(logic._Task("c", "u")), entered.set()))
    t.start()
    assert not entered.wait(0.2)  # full: the third waits
    assert sched.get().key == "a"
    sched.done()
    assert entered.wait(5)
    t.join()
    sched.close()
    assert sched.get().key == "b" and sched.get().key == "c"
    sched.done()
    sched.done()
    assert sched.get() is None


def test_scheduler_hands_out_retries_when_due():
    sched = logic._Scheduler(capacity=4)
    sched.submit(logic._Task("a", "u"))
    task = sched.get()
    sched.later(task, 0.0)  # due at once
    sched.submit(logic._Task("b", "u"))
    assert sched.get().key == "a" and sched.get().key == "b"


# --- runs against the fake fetcher ------------------------------------------------------------------------

def test_run_settles_every_url_and_retries_only_transient_failures(tmp_path, fake):
    urls = [f"{U}/ok/{i}" for i in range(20)] + [f"{U}/flaky/2/a", f"{U}/flaky/9/b", f"{U}/404/c", f"{U}/down/d",
                                                 f"{U}/html/e", "ftp://nope/f"]
    m = write_manifest(tmp_path / "m", urls[:-1])
    out = tmp_path / "out"
    summary = run(m, out, max_attempts=3)
    led = read_ledger(out)
    assert len(led) == 25 and led.index.is_unique
    assert tuple(led.loc[f"{U}/flaky/2/a", ["status", "attempts"]]) == ("ok", 3), led.loc[f"{U}/flaky/2/a"]
    b = led.loc[f"{U}/flaky/9/b"]
    assert (b.status, b.error_class, b.attempts) == ("failed", "network", 3) and "attempt 3 of 3" in b.message
    assert led.loc[f"{U}/404/c", "attempts"] == 1 and led.loc[f"{U}/html/e", "error_class"] == "not_image"
    assert tuple(led.loc[f"{U}/down/d", ["error_class", "http_status", "attempts"]]) == ("http_5xx", 503, 3)
    assert fake.calls[f"{U}/404/c"] == 1 and fake.calls[f"{U}/down/d"] == 3
    ok = led[led.status == "ok"]
    assert len(ok) == 21 and set(ok.format) == {"jpg"} and set(ok.width) == {40} and set(ok.bytes) == {len(JPEG)}
    for key, sha in zip(ok.key, ok.sha256):
        with open(out / "images" / f"{key}.jpg", "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == sha
    assert sorted(os.listdir(out / "images")) == sorted(f"{k}.jpg" for k in ok.key)
    assert summary["counts"]["ok"] == 21 and summary["counts"]["network"] == 1 and summary["complete"]
    on_disk = json.loads((out / "download_summary.json").read_text())
    assert on_disk["counts"] == summary["counts"] and on_disk["total"] == 25
    assert not (out / "journal").exists() and not (out / ".partial").exists()


def test_rerun_fetches_only_never_tried_and_transient(tmp_path, fake):
    urls = [f"{U}/ok/{i}" for i in range(5)] + [f"{U}/404/a", f"{U}/down/b", f"{U}/flaky/2/c"]
    m = write_manifest(tmp_path / "m", urls)
    out = tmp_path / "out"
    run(m, out, max_attempts=2)
    first = dict(fake.calls)
    summary = run(m, out, max_attempts=2)
    again = {u: fake.calls[u] - first.get(u, 0) for u in urls}
    assert again == {**{u: 0 for u in urls[:6]}, f"{U}/down/b": 2, f"{U}/flaky/2/c": 1}
    led = read_ledger(out)
    assert led.loc[f"{U}/flaky/2/c", "status"] == "ok" and led.loc[f"{U}/flaky/2/c", "attempts"] == 3
    assert led.loc[f"{U}/down/b", "attempts"] == 4  # attempts add up over runs
    assert summary["run"]["carried_over"] == 6 and summary["run"]["requests"] == 3
    # --retry-permanent fetches the permanent failures again too.
    run(m, out, max_attempts=1, retry_permanent=True)
    assert fake.calls[f"{U}/404/a"] == 2 and fake.calls[f"{U}/ok/0"] == 1


def test_retry_after_sets_the_wait_and_a_long_one_waits_for_the_next_run(tmp_path, fake, monkeypatch):
    waits = []
    real_later = logic._Scheduler.later

    def later(self, task, due):
        waits.append(round(due - logic.time.monotonic(), 1))
        real_later(self, task, logic.time.monotonic())  # no real sleep in a unit test

    monkeypatch.setattr(logic._Scheduler, "later", later)
    m = write_manifest(tmp_path / "m", [f"{U}/ra/7/a", f"{U}/ra/500/b"])
    run(m, tmp_path / "out", retry_after_max=60)
    assert waits == [7.0]
    led = read_ledger(tmp_path / "out")
    assert led.loc[f"{U}/ra/7/a", "status"] == "ok"
    b = led.loc[f"{U}/ra/500/b"]
    assert (b.status, b.http_status, b.attempts) == ("failed", 429, 1) and "next run" in b.message


def test_resume_after_a_crash_trusts_rows_not_files(tmp_path, fake):
    """The state a SIGKILL can leave: journal rows (one cut short), a row whose image is gone,
    images with no row (one whole, one not), a half-written temp file. Every URL ends settled exactly once."""
    urls = [f"{U}/ok/{i}" for i in range(7)]
    keys = [image_key(u) for u in urls]
    m = write_manifest(tmp_path / "m", urls)
    out = tmp_path / "out"
    os.makedirs(out / "images")
    os.makedirs(out / ".partial")
    os.makedirs(out / "journal")
    for k in keys[:2]:
        (out / "images" / f"{k}.jpg").write_bytes(JPEG)
    (out / "images" / f"{keys[4]}.jpg").write_bytes(b"half an image, never journalled")
    (out / ".partial" / f"{keys[5]}.x.part").write_bytes(JPEG[:10])
    (out / "images" / f"{keys[6]}.jpg").write_bytes(JPEG)  # renamed in place, killed before its row was written
    ok_row = lambda k, u: {**row(k, "2024-01-01T00:00:00.000000Z", "ok", "ok", bytes=len(JPEG), format="jpg"), "url": u}  # noqa: E731
    lines = b"".join(ledger.journal_line(ok_row(k, u)) for k, u in zip(keys[:3], urls[:3]))  # keys[2]'s file is missing
    (out / "journal" / "20240101T000000000000Z-1-aaaaaa.jsonl").write_bytes(lines + b'{"key": "' + keys[3].encode())
    summary = run(m, out)
    assert [fake.calls[u] for u in urls] == [0, 0, 1, 1, 1, 1, 0]
    led = read_ledger(out)
    assert len(led) == 7 and led.index.is_unique and set(led.status) == {"ok"}
    assert "stopped run" in led.loc[urls[6], "message"] and summary["run"]["adopted"] == 1
    for k in led.key:
        assert (out / "images" / f"{k}.jpg").read_bytes() == JPEG
    assert not (out / ".partial").exists()


def test_store_carries_images_across_outputs_and_a_grown_manifest(tmp_path, fake):
    urls = [f"{U}/ok/{i}" for i in range(8)] + [f"{U}/404/x", f"{U}/down/y"]
    st = str(tmp_path / "store")
    run(write_manifest(tmp_path / "m1", urls), tmp_path / "out1", store=st, max_attempts=1)
    grown = urls + [f"{U}/ok/new{i}" for i in range(3)]
    before = Counter(fake.calls)
    summary = run(write_manifest(tmp_path / "m2", grown), tmp_path / "out2", store=st, max_attempts=1)
    fetched = {u for u in grown if fake.calls[u] > before[u]}
    assert fetched == {f"{U}/down/y"} | {f"{U}/ok/new{i}" for i in range(3)}
    led = read_ledger(tmp_path / "out2")
    assert len(led) == 13 and led.loc[f"{U}/404/x", "error_class"] == "http_404"
    for k in led[led.status == "ok"].key:
        assert (tmp_path / "out2" / "images" / f"{k}.jpg").read_bytes() == JPEG
    assert summary["run"]["copied_from_store"] == 8
    # The store knows every key ever seen; a shrunk manifest's output holds only its own rows.
    assert len(contract.read_ledger(os.path.join(st, "ledger.parquet"))) == 13
    run(write_manifest(tmp_path / "m3", urls[:2]), tmp_path / "out3", store=st)
    assert len(read_ledger(tmp_path / "out3")) == 2 and len(os.listdir(tmp_path / "out3" / "images")) == 2


def test_store_receives_what_a_killed_run_settled_only_in_its_output(tmp_path, fake):
    urls = [f"{U}/ok/{i}" for i in range(4)]
    m = write_manifest(tmp_path / "m", urls)
    run(m, tmp_path / "out")  # no store: as if the rows had not reached the store before a kill
    st = str(tmp_path / "store")
    run(m, tmp_path / "out", store=st)
    run(m, tmp_path / "other", store=st)
    assert all(fake.calls[u] == 1 for u in urls)
    assert len(os.listdir(os.path.join(st, "images"))) == 4


def test_file_names_come_from_the_key_never_from_the_url(tmp_path, fake):
    urls = [f"{U}/ok/../../../../tmp/evil.jpg", f"{U}/ok/a/b%2F..%2F..%2Fx.png", f"{U}/ok/\u00e9t\u00e9 photo.jpg?x=1/../.."]
    m = write_manifest(tmp_path / "m", urls)
    out = tmp_path / "out"
    run(m, out)
    everything = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert everything == sorted([".lock", "download_summary.json", "ledger.parquet"]
                                + [os.path.join("images", f"{image_key(u)}.jpg") for u in urls])


def test_manifest_problems_are_named(tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(logic.DownloadError, match="not found"):
        logic.run(str(tmp_path / "none"), out)
    os.makedirs(tmp_path / "a")
    pd.DataFrame({"url": ["http://x/1"]}).to_parquet(tmp_path / "a" / "manifest.parquet")
    with pytest.raises(logic.DownloadError, match="no column key"):
        logic.run(str(tmp_path / "a"), out)
    os.makedirs(tmp_path / "b")
    pd.DataFrame({"key": [image_key("http://x/1"), "0" * 20], "url": ["http://x/1", "http://x/2"], "row": [2, 7]}) \
        .to_parquet(tmp_path / "b" / "manifest.parquet")
    with pytest.raises(logic.DownloadError, match=r"row 7: key 0{20} is not image_key\(url\) for URL 'http://x/2'"):
        logic.run(str(tmp_path / "b"), out)
    write_manifest(tmp_path / "c", ["http://x/1", "http://x/1"])
    with pytest.raises(logic.DownloadError, match="appears 2 times"):
        logic.run(str(tmp_path / "c"), out)
    os.makedirs(tmp_path / "d")
    (tmp_path / "d" / "manifest.parquet").write_text("not parquet")
    with pytest.raises(logic.DownloadError, match="not a readable parquet"):
        logic.run(str(tmp_path / "d"), out)
    with pytest.raises(logic.DownloadError, match="workers is 0"):
        logic.run(str(tmp_path / "d"), out, workers=0)


def test_a_second_run_on_the_same_output_is_refused(tmp_path, fake):
    m = write_manifest(tmp_path / "m", [f"{U}/ok/1"])
    with store.FolderLock(str(tmp_path / "out"), "the output folder"):
        with pytest.raises(store.StoreError, match="another download run"):
            run(m, tmp_path / "out")


def test_cli_exits_2_with_one_clear_line(tmp_path, capsys):
    assert download_main(["--manifest", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refused: download: manifest") and "ingest" in err and "Traceback" not in err


def test_cli_runs_and_prints_the_summary_table(tmp_path, fake, capsys):
    m = write_manifest(tmp_path / "m", [f"{U}/ok/1", f"{U}/404/2"])
    assert download_main(["--manifest", m, "--output", str(tmp_path / "o"), "--workers", "2", "--no-progress",
                          "--backoff", "0", "--max-attempts", "1"]) == 0
    out = capsys.readouterr().out
    assert "error class" in out and "http_404" in out and "50.00%" in out


def test_component_writes_the_output_folder_and_metadata(tmp_path, fake, capsys):
    from components.download.component import download

    m = write_manifest(tmp_path / "m", [f"{U}/ok/1", f"{U}/ok/2", f"{U}/404/3"])
    downloads = types.SimpleNamespace(path=str(tmp_path / "downloads"), uri="", metadata={})
    download.python_func(manifest=types.SimpleNamespace(path=m, uri="", metadata={}), downloads=downloads, store="",
                         workers=2, timeout=1.0, max_attempts=1, max_bytes=1_000_000, allow_private=True, min_ok=0.0)
    assert downloads.metadata == {"total": 3, "ok": 2, "failed": 1, "transient_failed": 0}
    assert len(read_ledger(downloads.path)) == 3 and len(os.listdir(os.path.join(downloads.path, "images"))) == 2
    # progress lines on stdout for the local console's bar instead of the CLI's tqdm bar on stderr
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("progress:")]
    assert lines[0] == "progress: download 0/3 URLs" and lines[-1] == "progress: download 3/3 URLs"
    assert "download:" not in err and "img/s" not in err


def test_a_journal_that_cannot_be_written_stops_the_workers_with_a_clear_error(tmp_path, fake, monkeypatch):
    import errno

    urls = [f"{U}/ok/{i}" for i in range(200)]
    m = write_manifest(tmp_path / "m", urls)
    real_write, calls = store.Journal.write, []
    journalled = threading.Condition()

    def full_disk(self, rows):
        with journalled:
            calls.append(len(rows))
            journalled.notify_all()
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, rows)

    monkeypatch.setattr(store.Journal, "write", full_disk)
    monkeypatch.setattr(logic, "FLUSH_ROWS", 4)  # several writes, each of a few rows
    real_fetch, started = fake.fetch, itertools.count(1)

    def paced_fetch(self, url):
        # The fake's fetches are instant: held to one journal write's worth of rows ahead of the journal,
        # the workers are still busy when it fails (instead of a sleep per fetch).
        n = next(started)
        with journalled:
            journalled.wait_for(lambda: n <= 4 * (len(calls) + 1) or len(calls) > 1, timeout=60)
        return real_fetch(self, url)

    monkeypatch.setattr(fake, "fetch", paced_fetch)
    with pytest.raises(logic.DownloadError, match=r"writing the ledger journal in .*No space left.*rerun to resume"):
        run(m, tmp_path / "out", workers=2)
    fetched = sum(fake.calls.values())
    # The run's threads end by themselves once it stopped: wait for them instead of sleeping.
    for t in threading.enumerate():
        if t.name.startswith("download-"):
            t.join(timeout=60)
            assert not t.is_alive(), f"thread {t.name} still runs after the download stopped"
    assert sum(fake.calls.values()) <= fetched + 2  # the workers stop: at most the fetches under way end
    assert fetched < 200
    monkeypatch.setattr(store.Journal, "write", real_write)
    summary = run(m, tmp_path / "out")  # the rerun resumes: what was journalled is not fetched again
    r = summary["run"]
    assert summary["ok"] == 200 and r["carried_over"] == calls[0] and r["fetched_ok"] + r["adopted"] == 200 - calls[0]
