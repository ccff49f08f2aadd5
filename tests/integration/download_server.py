"""A loopback HTTP(S) server for the download tests: serves images and injects every fault the step classifies.

In the style of img2dataset's tests/http_server.py, grown a path per failure class. Every request
is counted per path (with its query), so a test can prove what was and was not fetched again.

    with FaultServer() as srv:
        srv.url("/img/a.jpg")          # a JPEG
        srv.url("/img/a.png")          # the format follows the extension (jpg png gif bmp webp)
        srv.url("/status/503")         # that status; ?retry_after=2 adds a Retry-After header
        srv.url("/flaky/x?fail=2")     # 503 twice, then the image
        srv.url("/drip?every=0.2")     # headers at once, then a byte every 0.2 s
"""
from __future__ import annotations

import collections
import datetime
import io
import os
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image

_IMAGE_CACHE: dict[tuple[str, str], bytes] = {}
_PIL = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP", "tiff": "TIFF"}


def image_bytes(fmt: str = "jpg", name: str = "", size: tuple[int, int] = (48, 32)) -> bytes:
    """A small image of that format; the colour follows the name, so two names give two files."""
    cache_key = (fmt, name, size)
    if cache_key not in _IMAGE_CACHE:
        seed = sum(name.encode()) % 200
        im = Image.new("RGB", size, (30 + seed, 90, 160))
        for x in range(0, size[0], 4):
            im.putpixel((x, x % size[1]), (255, 255, 255))
        buf = io.BytesIO()
        im.save(buf, _PIL[fmt])
        _IMAGE_CACHE[cache_key] = buf.getvalue()
    return _IMAGE_CACHE[cache_key]


def self_signed_context(host: str = "127.0.0.1") -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate (which no client should trust)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        srv = self.server.owner
        with srv.lock:
            srv.counts[self.path] += 1
            srv.times[self.path].append(time.monotonic())
            seen = srv.counts[self.path]
        parts = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        segs = [s for s in parts.path.split("/") if s]
        route = segs[0] if segs else ""
        handler = getattr(self, "r_" + route.replace("-", "_"), None)
        if handler is None:
            return self._send(404, b"not found", "text/plain")
        return handler(segs, q, seen)

    # --- helpers ---
    def _send(self, status: int, body: bytes = b"", ctype: str = "application/octet-stream", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _image(self, name: str, q: dict):
        latency = float(q.get("latency", self.server.owner.latency))
        if latency:
            time.sleep(latency)
        fmt = name.rsplit(".", 1)[-1] if "." in name else "jpg"
        if fmt not in _PIL:
            fmt = "jpg"
        size = (int(q.get("w", 48)), int(q.get("h", 32)))
        # A wrong Content-Type on purpose: the step must decide by decoding.
        self._send(200, image_bytes(fmt, name, size), "text/plain")

    def _stopping(self) -> bool:
        return self.server.owner.stopping.is_set()

    # --- routes: /<route>/... ---
    def r_img(self, segs, q, seen):
        self._image(segs[-1] if len(segs) > 1 else "x.jpg", q)

    def r_status(self, segs, q, seen):
        code = int(segs[1])
        headers = {}
        if "retry_after" in q:
            headers["Retry-After"] = q["retry_after"]
        self._send(code, f"status {code}".encode(), "text/plain", headers)

    def r_flaky(self, segs, q, seen):
        if seen <= int(q.get("fail", 1)):
            headers = {"Retry-After": q["retry_after"]} if "retry_after" in q else {}
            return self._send(int(q.get("code", 503)), b"try again", "text/plain", headers)
        self._image(segs[-1] + ".jpg", q)

    def r_html(self, segs, q, seen):
        self._send(200, b"<!DOCTYPE html><html><body>Photo removed</body></html>", "image/jpeg")

    def r_empty(self, segs, q, seen):
        self._send(200, b"", "image/jpeg")

    def r_truncated(self, segs, q, seen):
        data = image_bytes("jpg", "truncated", (64, 64))
        self._send(200, data[: len(data) // 2], "image/jpeg")

    def r_garbage(self, segs, q, seen):
        self._send(200, bytes(range(256)) * 8, "image/jpeg")

    def r_tiff(self, segs, q, seen):
        self._send(200, image_bytes("tiff", "t"), "image/tiff")

    def r_big(self, segs, q, seen):
        n = int(q.get("n", 200_000))
        if q.get("chunked"):
            # No Content-Length: only counting the bytes as they arrive can stop it.
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"\xff" * 8192
            try:
                for _ in range(n // len(chunk) + 1):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True
            return
        data = image_bytes("jpg", "big")
        self._send(200, data + b"\x00" * max(0, n - len(data)), "image/jpeg")

    def r_redirect(self, segs, q, seen):
        self.send_response(int(q.get("code", 302)))
        if "to" in q:
            self.send_header("Location", q["to"])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def r_chain(self, segs, q, seen):
        n = int(segs[1])
        if n <= 0:
            return self._image("end.jpg", q)
        self.send_response(301)
        self.send_header("Location", f"/chain/{n - 1}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def r_loop(self, segs, q, seen):
        other = "b" if segs[-1] == "a" else "a"
        self.send_response(302)
        self.send_header("Location", f"/loop/{other}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def r_drip(self, segs, q, seen):
        every, n = float(q.get("every", 0.2)), int(q.get("n", 1000))
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.flush()
        try:
            for _ in range(n):
                if self._stopping():
                    break
                self.wfile.write(b"\xff")
                self.wfile.flush()
                time.sleep(every)
        except OSError:
            pass
        self.close_connection = True

    def r_drip_headers(self, segs, q, seen):
        every = float(q.get("every", 0.2))
        try:
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 1000:
                if self._stopping():
                    break
                self.wfile.write(bytes([b]))
                self.wfile.flush()
                time.sleep(every)
        except OSError:
            pass
        self.close_connection = True

    def r_slow(self, segs, q, seen):
        deadline = time.monotonic() + float(q.get("s", 5))
        while time.monotonic() < deadline and not self._stopping():
            time.sleep(0.05)
        self._image("slow.jpg", {})

    def r_reset(self, segs, q, seen):
        # SO_LINGER 0 turns close() into a TCP RST.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def r_close(self, segs, q, seen):
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def r_incomplete(self, segs, q, seen):
        data = image_bytes("jpg", "incomplete", (64, 64))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 3])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    owner: "FaultServer"

    def handle_error(self, request, client_address):
        # A client that hung up (a killed download, a deadline) is part of the tests, not an error.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            super().handle_error(request, client_address)


class FaultServer:
    """The server on 127.0.0.1, in a thread; `latency` delays every image (seconds)."""

    def __init__(self, latency: float = 0.0, tls: bool = False):
        self.latency = latency
        self.tls = tls
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self.stopping = threading.Event()
        for fmt in ("jpg", "png", "gif", "bmp", "webp", "tiff"):
            image_bytes(fmt, f"a.{fmt}")  # the first encode of a format is slow: not while a client waits
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        if tls:
            ctx = self_signed_context()
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def count(self, path: str) -> int:
        with self.lock:
            return self.counts[path]

    def start(self) -> "FaultServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


if __name__ == "__main__":  # a manual check: python tests/integration/download_server.py
    with FaultServer() as srv:
        print("serving on", srv.base, "- Ctrl-C stops")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
