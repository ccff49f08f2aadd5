"""The download step against a loopback server that injects every failure: each error class, retries, Retry-After, TLS."""
import json
import os
import sys

import pandas as pd
import pytest

from download_server import FaultServer, closed_port

from components.common.labels import image_key
from components.download import fetch, logic


def write_manifest(folder, urls) -> str:
    os.makedirs(folder, exist_ok=True)
    pd.DataFrame({"key": [image_key(u) for u in urls], "url": urls, "row": range(2, len(urls) + 2)}) \
        .to_parquet(os.path.join(folder, "manifest.parquet"))
    return str(folder)


def ledger(out) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(out, "ledger.parquet")).set_index("url")


@pytest.fixture(scope="module")
def servers():
    with FaultServer() as plain, FaultServer(tls=True) as tls:
        yield plain, tls


def test_every_failure_is_classified(servers, tmp_path, capsys):
    srv, tls = servers
    expected = {
        srv.url("/img/a.jpg"): "ok", srv.url("/img/a.png"): "ok", srv.url("/img/a.gif"): "ok",
        srv.url("/img/a.bmp"): "ok", srv.url("/img/a.webp"): "ok", srv.url("/chain/2"): "ok",
        srv.url("/nope"): "http_404",
        srv.url("/status/403"): "http_4xx", srv.url("/status/429"): "http_4xx",
        srv.url("/status/500"): "http_5xx", srv.url("/status/503"): "http_5xx",
        srv.url("/redirect"): "redirect", srv.url("/chain/9"): "redirect", srv.url("/loop/a"): "redirect",
        srv.url("/redirect?to=ftp://example.com/a.jpg"): "redirect",
        "http://photos.invalid/a.jpg": "dns",
        srv.url("/slow?s=5"): "timeout", srv.url("/drip?every=0.1"): "timeout",
        srv.url("/drip-headers?every=0.1"): "timeout",
        srv.url("/reset"): "connection_reset", srv.url("/close"): "connection_reset",
        f"http://127.0.0.1:{closed_port()}/a.jpg": "connection_refused",
        srv.url("/incomplete"): "network",
        tls.url("/img/a.jpg"): "tls",
        srv.url("/html"): "not_image", srv.url("/empty"): "not_image", srv.url("/truncated"): "not_image",
        srv.url("/garbage"): "not_image", srv.url("/tiff"): "not_image",
        srv.url("/big?n=300000"): "too_large", srv.url("/big?chunked=1&n=300000"): "too_large",
        srv.url("/img/huge.jpg?w=300&h=200"): "too_large",
        "ftp://example.com/a.jpg": "invalid_url", "no scheme at all": "invalid_url",
    }
    out = tmp_path / "out"
    summary = logic.run(write_manifest(tmp_path / "m", list(expected)), str(out), workers=8, timeout=1.0,
                        max_attempts=1, max_bytes=100_000, max_pixels=20_000, progress=False)
    led = ledger(out)
    got = led["error_class"].to_dict()
    assert got == expected
    assert set(got.values()) == set(ledger_classes())  # every class of the contract, each at least once
    assert (led.loc[srv.url("/img/a.png"), ["format", "width", "height"]].tolist()) == ["png", 48, 32]
    assert led.loc[srv.url("/nope"), "http_status"] == 404 and led.loc[srv.url("/status/503"), "http_status"] == 503
    assert "deadline" in led.loc[srv.url("/drip?every=0.1"), "message"]
    assert "deadline" in led.loc[srv.url("/drip-headers?every=0.1"), "message"]
    assert "read timeout" in led.loc[srv.url("/slow?s=5"), "message"]
    assert "certificate verify failed" in led.loc[tls.url("/img/a.jpg"), "message"]
    assert all(led.loc[u, "message"] for u, c in expected.items() if c != "ok")
    # The study's table, and the same counts on disk.
    printed = capsys.readouterr().out
    assert "error class" in printed and "not_image" in printed and "total" in printed
    on_disk = json.loads((out / "download_summary.json").read_text())
    assert on_disk["counts"] == summary["counts"]
    assert on_disk["counts"]["not_image"] == 5 and on_disk["counts"]["timeout"] == 3 and on_disk["total"] == len(expected)


def ledger_classes():
    from components.common.ledger import ERROR_CLASSES

    return ERROR_CLASSES


def test_transient_failures_are_retried_until_they_succeed(servers, tmp_path):
    srv, _ = servers
    urls = [srv.url("/flaky/r1?fail=2"), srv.url("/flaky/r2?fail=5"), srv.url("/flaky/r3?fail=1&code=404")]
    out = tmp_path / "out"
    logic.run(write_manifest(tmp_path / "m", urls), str(out), workers=2, max_attempts=3, backoff=0.01, progress=False,
              print_table=False)
    led = ledger(out)
    assert tuple(led.loc[urls[0], ["status", "attempts"]]) == ("ok", 3) and srv.count("/flaky/r1?fail=2") == 3
    assert tuple(led.loc[urls[1], ["error_class", "attempts"]]) == ("http_5xx", 3)
    assert tuple(led.loc[urls[2], ["error_class", "attempts"]]) == ("http_404", 1)  # permanent: once


def test_retry_after_is_honoured(servers, tmp_path):
    srv, _ = servers
    path = "/flaky/ra?fail=1&code=429&retry_after=1"
    out = tmp_path / "out"
    logic.run(write_manifest(tmp_path / "m", [srv.url(path)]), str(out), workers=1, max_attempts=2, backoff=0.001,
              progress=False, print_table=False)
    assert ledger(out).loc[srv.url(path), "status"] == "ok"
    first, second = srv.times[path]
    assert second - first >= 0.9  # the server asked for 1 s; the backoff alone would be ~0


def test_private_addresses_are_refused_before_and_after_connecting(servers, tmp_path, monkeypatch):
    srv, _ = servers
    urls = [srv.url("/img/private.jpg"), f"http://localhost:{srv.port}/img/private2.jpg"]
    out = tmp_path / "out"
    with pytest.raises(logic.DownloadError, match=r"0 of 2 images downloaded \(none\): invalid_url 2 \(100%\)"):
        logic.run(write_manifest(tmp_path / "m", urls), str(out), workers=2, allow_private=False, progress=False,
                  print_table=False)
    assert set(ledger(out).error_class) == {"invalid_url"}  # every URL settled and kept before the step stopped
    assert srv.count("/img/private.jpg") == srv.count("/img/private2.jpg") == 0
    # A name that passed the check but connects to a private address (DNS rebinding) is refused at connect.
    monkeypatch.setattr(fetch.Fetcher, "_refuse_private", lambda self, host, port: None)
    f = fetch.Fetcher(per_host=1, timeout=1, deadline=2, max_bytes=10**6, max_pixels=10**6, max_redirects=1,
                      allow_private=False, user_agent="t")
    try:
        outcome = f.fetch(srv.url("/img/rebound.jpg"))
    finally:
        f.close()
    assert outcome.error_class == "invalid_url" and "connected to 127.0.0.1" in outcome.message
    assert srv.count("/img/rebound.jpg") == 0


def test_connections_are_reused(servers):
    srv, _ = servers
    f = fetch.Fetcher(per_host=2, timeout=1, deadline=2, max_bytes=10**6, max_pixels=10**6, max_redirects=1,
                      allow_private=True, user_agent="t")
    try:
        outcomes = [f.fetch(srv.url(f"/img/reuse{i}.jpg")) for i in range(10)]
        pool = f._pm.connection_from_url(srv.url("/"))
    finally:
        f.close()
    assert all(o.ok for o in outcomes)
    assert pool.num_connections == 1 and pool.num_requests == 10


def _refused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on return: nothing listens there


def test_no_image_at_all_stops_the_step_naming_the_cause(tmp_path, capsys):
    """The image server is not running: download says so, instead of validate failing on empty columns."""
    from components.download.__main__ import main

    port = _refused_port()
    urls = [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(5)]
    out = tmp_path / "out"
    code = main(["--manifest", write_manifest(tmp_path / "m", urls), "--output", str(out), "--max-attempts", "1",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert "0 of 5 images downloaded (none): connection_refused 5 (100%)" in captured.err
    assert "Is the image server running and reachable from here?" in captured.err
    assert "connection_refused" in captured.out  # the table of failures is printed first
    assert set(ledger(out).error_class) == {"connection_refused"}  # settled and kept: a rerun retries them


def test_min_ok_share(servers, tmp_path):
    srv, _ = servers
    urls = [srv.url("/img/a.jpg"), srv.url("/status/404?b"), srv.url("/status/404?c"), srv.url("/status/404?d")]
    manifest = write_manifest(tmp_path / "m", urls)
    summary = logic.run(manifest, str(tmp_path / "ok"), workers=2, progress=False, print_table=False, min_ok=0.25)
    assert summary["ok"] == 1
    with pytest.raises(logic.DownloadError, match=r"1 of 4 images downloaded \(fewer than --min-ok 50% of them\): "
                                                  r"http_404 3 \(75%\)\. Are the URLs still current"):
        logic.run(manifest, str(tmp_path / "half"), workers=2, progress=False, print_table=False, min_ok=0.5)
    with pytest.raises(logic.DownloadError, match="min_ok is 1.5"):
        logic.run(manifest, str(tmp_path / "bad"), min_ok=1.5)
