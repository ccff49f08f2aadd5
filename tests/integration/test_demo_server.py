"""The demo's loopback image server: each route plays its fault, transient faults pass on a retry, it binds 127.0.0.1 only, and it always stops."""
import csv
import hashlib
import http.client
import io
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from PIL import Image

from pipeline import defaults
from pipeline.demo import DemoServer, fault_table_path, generate_demo, load_labels, write_sheet

CLIENT_TIMEOUT = 1.5  # seconds: below the 3 s stall, so a stall reads as a timeout, yet slack for a busy CI machine
TOO_LARGE = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("demo") / "set")
    generate_demo(d, size=120, seed=0, workers=1)  # >= 100 faces: every fault class appears
    return d


def _get(url: str, max_bytes: int = TOO_LARGE // 2) -> tuple:
    """('status', code, headers, body) or ('error', exception): a bare client that follows nothing."""
    parts = urlsplit(url)
    if parts.hostname.endswith(".invalid"):
        raise AssertionError(f"{url}: .invalid names must never reach a resolver")
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=CLIENT_TIMEOUT,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        body = resp.read(max_bytes)
        return "status", resp.status, dict(resp.getheaders()), body
    except Exception as e:  # noqa: BLE001 - the exception is the answer
        return "error", e
    finally:
        conn.close()


def _outcome(url: str, server: DemoServer) -> str:
    """The download step's error_class for one fetch of url, following redirects ourselves."""
    if urlsplit(url).hostname.endswith(".invalid"):
        return "dns"
    for _ in range(6):
        res = _get(url)
        if res[0] == "error":
            e = res[1]
            if isinstance(e, ssl.SSLError):
                return "tls"
            if isinstance(e, (TimeoutError, socket.timeout)):
                return "timeout"
            if isinstance(e, ConnectionResetError):
                return "connection_reset"
            if isinstance(e, ConnectionRefusedError):
                return "connection_refused"
            return f"other:{type(e).__name__}"
        _, code, headers, body = res
        if 300 <= code < 400:
            if "Location" not in headers:
                return "redirect"
            url = server.base_url + headers["Location"]
            continue
        if code == 404:
            return "http_404"
        if code >= 500:
            return "http_5xx"
        if code >= 400:
            return "http_4xx"
        length = int(headers.get("Content-Length", len(body)))
        if length > TOO_LARGE // 2 or len(body) >= TOO_LARGE // 2:
            return "too_large"
        try:
            with Image.open(io.BytesIO(body)) as im:
                im.load()
        except Exception:  # noqa: BLE001 - not decodable is the answer
            return "not_image"
        return "ok"
    return "redirect"


def test_every_fault_url_fails_as_its_class_and_good_urls_serve_the_images(demo_dir, tmp_path):
    labels = load_labels(demo_dir).set_index("name")
    with DemoServer(demo_dir, seed=0, port=0, stall_seconds=3, too_large_bytes=TOO_LARGE) as srv:
        sheet = write_sheet(demo_dir, srv, str(tmp_path / "sheet.xlsx"))
        rows = list(csv.DictReader(open(fault_table_path(sheet))))
        # one URL of each route (and status code), plus every plain one
        picked = {}
        for r in rows:
            picked.setdefault((r["route"], r["url"].split("/")[4] if r["route"] == "status" else ""), r)
        transient = ("flaky503", "flaky429")  # checked below, on their first request
        sample = [r for k, r in picked.items() if k[0] not in transient] + [r for r in rows if r["route"] == "img"][:20]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda r: _outcome(r["url"], srv), sample))
        wrong = [(r["route"], r["url"], r["expected_class"], g) for r, g in zip(sample, got) if g != r["expected_class"]]
        assert not wrong
        assert {r["expected_class"] for r in sample} >= {
            "ok", "http_404", "http_4xx", "http_5xx", "redirect", "dns", "timeout", "connection_reset",
            "connection_refused", "tls", "not_image", "too_large"}
        # transient faults: the first answer fails with Retry-After, the retry gets the image
        for route, code in (("flaky503", 503), ("flaky429", 429)):
            r = picked[(route, "")]
            first, second = _get(r["url"]), _get(r["url"])
            assert first[1] == code and first[2]["Retry-After"].isdigit()
            assert second[1] == 200
            assert hashlib.sha256(second[3]).hexdigest() == labels.loc[r["name"], "sha256"]
        # good URLs (commas included) serve the very bytes generate_demo wrote
        for r in sample:
            if r["route"] in ("img", "cdn"):
                res = _get(r["url"])
                assert hashlib.sha256(res[3]).hexdigest() == labels.loc[r["name"], "sha256"], r["url"]
        # the TLS listener is real: a client that skips verification gets the image
        tls = picked[("tls", "")]
        parts = urlsplit(tls["url"])
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=5,
                                           context=ssl._create_unverified_context())
        conn.request("GET", parts.path)
        body = conn.getresponse().read()
        conn.close()
        assert hashlib.sha256(body).hexdigest() == labels.loc[tls["name"], "sha256"]


def test_sheet_is_read_by_ingest(demo_dir, tmp_path):
    from components.ingest import logic as ingest

    with DemoServer(demo_dir, port=0) as srv:
        sheet = write_sheet(demo_dir, srv, str(tmp_path / "sheet.xlsx"))
    summary = ingest.run(source=sheet, output_dir=str(tmp_path / "manifest"))
    assert summary["has_valence_arousal"]
    assert summary["kept"] == 120 - 1  # the image whose duplicate row disagrees is rejected
    assert summary["rejected_by_reason"] == {"conflicting_duplicate": 2}


def _local_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 9))
        return s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()


def test_binds_loopback_only(demo_dir):
    with DemoServer(demo_dir, port=0) as srv:
        ports = [urlsplit(srv.base_url).port, urlsplit(srv.tls_base_url).port]
        assert all(u.startswith(("http://127.0.0.1:", "https://127.0.0.1:")) for u in (srv.base_url, srv.tls_base_url))
        for lst in srv._listeners:
            assert lst.server_address[0] == "127.0.0.1"
        assert srv._refused.getsockname()[0] == "127.0.0.1"
        other = _local_address()
        if other and not other.startswith("127."):
            for port in ports:
                with pytest.raises(OSError):
                    socket.create_connection((other, port), timeout=2).close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", srv.refused_port), timeout=2).close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_server_stops_when_the_body_raises_even_with_a_client_stalled(demo_dir):
    stalled = {}

    def stall(url):
        stalled["result"] = _get_slow(url)

    with pytest.raises(RuntimeError, match="boom"):
        with DemoServer(demo_dir, port=0, stall_seconds=120) as srv:
            ports = [urlsplit(srv.base_url).port, urlsplit(srv.tls_base_url).port]
            name = next(iter(srv.images))
            client = threading.Thread(target=stall, args=(srv.url("stall", name),))
            client.start()
            deadline = time.monotonic() + 10
            while not srv._listeners[0].live and time.monotonic() < deadline:
                time.sleep(0.05)  # until the request reaches the stalling handler
            assert srv._listeners[0].live
            raise RuntimeError("boom")
    client.join(30)
    assert not client.is_alive(), "a stalled request outlived the server"
    assert all(_refused(p) for p in ports)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("demo-")]
    srv.stop()  # a second stop is harmless


def _get_slow(url: str):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("GET", parts.path)
        return conn.getresponse().status
    except Exception as e:  # noqa: BLE001
        return type(e).__name__
    finally:
        conn.close()


def test_serve_cli_prints_where_it_serves_and_stops_on_ctrl_c(demo_dir, tmp_path):
    sheet = tmp_path / "cli-sheet.xlsx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.demo", "serve", "--dir", demo_dir, "--port", "0", "--sheet", str(sheet)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(defaults.REPO_ROOT)),
        # Started as a shell starts a background command (`cmd &`, a CI script): with SIGINT ignored. Ctrl-C must
        # still stop it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        text = "".join(lines)
        base = next(l.split(" at ")[-1].strip() for l in lines if l.startswith("serving"))
        assert base.startswith("http://127.0.0.1:") and f"sheet: {sheet}" in text
        name = load_labels(demo_dir)["name"].iat[0]
        assert _get(f"{base}/img/{name}")[1] == 200
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in out
        assert _refused(urlsplit(base).port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
