"""A loopback image server for a demo set, with the web's faults: HTTP errors, redirects, stalls, resets, refusals, TLS, bad bodies."""
from __future__ import annotations

import hashlib
import http.server
import os
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import unquote, urlsplit

from components.download.params import SPEC as DOWNLOAD
from pipeline import defaults
from pipeline.demo import faces
from pipeline.demo.generate import IMAGES_DIR, load_labels

LOOPBACK = "127.0.0.1"
# Retry-After of the transient 429/503 answers, in seconds: short, so the demo stays quick.
RETRY_AFTER_SECONDS = 1
# How long a handler may block on one send or receive before giving up on a client.
SOCKET_TIMEOUT = 15.0
# stop() waits this long for handler threads to end (they all watch the stop event).
JOIN_SECONDS = 5.0

# Each route of the server, the fault it plays and the error_class the download step should
# record for it (contract 2). Routes end in /<image name>; a good image lives at /img/<name>.
ROUTES = {
    "img": ("the image", "ok"),
    "cdn": ("the image at a CDN-style path with commas (/cdn/w_128,h_128,c_fill/NAME)", "ok"),
    "moved": ("301 to the image", "ok"),
    "flaky503": ("503 with Retry-After on the first request, then the image", "ok"),
    "flaky429": ("429 with Retry-After on the first request, then the image", "ok"),
    "truncated": ("the first half of the image's bytes, as a 200 (only decoding tells)", "not_image"),
    "status": ("that HTTP status (/status/CODE/NAME)", None),  # class depends on CODE
    "loop": ("302 to itself", "redirect"),
    "chain": ("302 to the next hop, endlessly (/chain/HOP/NAME)", "redirect"),
    "nolocation": ("302 without a Location header", "redirect"),
    "stall": ("accepts the request, then says nothing until stall_seconds pass", "timeout"),
    "drip": ("200 and headers, then one byte a second", "timeout"),
    "reset": ("closes the connection with a TCP RST (SO_LINGER 0)", "connection_reset"),
    "html": ("an HTML page served as image/jpeg", "not_image"),
    "huge": ("too_large_bytes bytes with a Content-Length", "too_large"),
    "hugestream": ("too_large_bytes bytes with no Content-Length", "too_large"),
}


def status_class(code: int) -> str:
    """The download step's error_class for an HTTP status (contract 2)."""
    if code == 404:
        return "http_404"
    if 500 <= code < 600:
        return "http_5xx"
    return "http_4xx"


def _self_signed(directory: str) -> tuple[str, str]:
    """A throwaway certificate for 127.0.0.1 (no CA trusts it: clients fail with a TLS error)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if not shutil.which("openssl"):
            raise RuntimeError(
                "the demo's TLS listener needs a self-signed certificate, but neither the Python package "
                "'cryptography' nor the 'openssl' command is available; install one, or serve without faults "
                "(--no-faults / DemoServer(faults=False))"
            ) from None
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1"],
            check=True, capture_output=True, timeout=30,
        )
        return cert, key
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "emotionet demo (self-signed)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .sign(pkey, hashes.SHA256())
    )
    with open(cert, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key, "wb") as f:
        f.write(pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return cert, key


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers one request according to its route (see ROUTES)."""

    server_version = "EmotioNetDemo/1"
    timeout = SOCKET_TIMEOUT

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        if self.server.demo.verbose:
            sys.stderr.write(f"demo server: {self.address_string()} {format % args}\n")

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    # ---------------------------------------------------------------------------------- routes

    def _answer(self, head: bool) -> None:
        demo: DemoServer = self.server.demo
        path = unquote(urlsplit(self.path).path)
        parts = [p for p in path.split("/") if p]
        if not parts or parts[-1] not in demo.images:
            return self._send(404, b"<html><body>no such image</body></html>", "text/html", head)
        route, name = parts[0], parts[-1]
        if route == "img" or route == "cdn":
            return self._image(name, head)
        if not demo.faults:
            return self._send(404, b"<html><body>faults are off</body></html>", "text/html", head)
        if route == "moved":
            return self._redirect(301, f"/img/{name}")
        if route in ("flaky503", "flaky429"):
            if demo.count_attempt(path) == 1:
                code = 503 if route == "flaky503" else 429
                return self._send(code, b"<html><body>try again</body></html>", "text/html", head,
                                  {"Retry-After": str(RETRY_AFTER_SECONDS)})
            return self._image(name, head)
        if route == "truncated":
            data = demo.read(name)
            return self._send(200, data[: max(16, len(data) // 2)], demo.content_type(name), head)
        if route == "status" and len(parts) == 3 and parts[1].isdigit():
            code = int(parts[1])
            return self._send(code, f"<html><body>{code}</body></html>".encode(), "text/html", head)
        if route == "loop":
            return self._redirect(302, path)
        if route == "chain" and len(parts) == 3 and parts[1].isdigit():
            return self._redirect(302, f"/chain/{int(parts[1]) + 1}/{name}")
        if route == "nolocation":
            self.send_response(302)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if route == "stall":
            return self._stall()
        if route == "drip":
            return self._drip(name, head)
        if route == "reset":
            return self._reset()
        if route == "html":
            page = b"<!DOCTYPE html><html><head><title>Image not found</title></head><body>" + b"x" * 2000 + b"</body></html>"
            return self._send(200, page, "image/jpeg", head)
        if route in ("huge", "hugestream"):
            return self._huge(route == "huge", head)
        return self._send(404, b"<html><body>no such route</body></html>", "text/html", head)

    def _send(self, code: int, body: bytes, ctype: str, head: bool, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _image(self, name: str, head: bool) -> None:
        demo: DemoServer = self.server.demo
        self._send(200, demo.read(name), demo.content_type(name), head, {"Cache-Control": "max-age=86400"})

    def _redirect(self, code: int, location: str) -> None:
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stall(self) -> None:
        """Says nothing until stall_seconds pass, the server stops, or the client hangs up."""
        demo: DemoServer = self.server.demo
        deadline = time.monotonic() + demo.stall_seconds
        while not demo.stopping.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.25)
            if readable:
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        break  # the client timed out and closed: free this thread now
                except (OSError, ValueError):
                    break
                demo.stopping.wait(0.25)  # the client sent more (a pipelined request): keep stalling
        self.close_connection = True

    def _drip(self, name: str, head: bool) -> None:
        demo: DemoServer = self.server.demo
        data = demo.read(name)
        self.send_response(200)
        self.send_header("Content-Type", demo.content_type(name))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if head:
            return
        deadline = time.monotonic() + demo.stall_seconds
        for i in range(len(data)):
            if demo.stopping.is_set() or time.monotonic() > deadline:
                break
            try:
                self.wfile.write(data[i:i + 1])
            except OSError:
                break  # the client gave up, as it should
            demo.stopping.wait(1.0)
        self.close_connection = True

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def _huge(self, declared: bool, head: bool) -> None:
        demo: DemoServer = self.server.demo
        total = demo.too_large_bytes
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if declared:
            self.send_header("Content-Length", str(total))
        self.end_headers()
        if head:
            return
        # A JPEG start, then padding: a client that trusts magic bytes still has to count.
        chunk = b"\xff\xd8\xff\xe0" + b"\0" * (64 * 1024 - 4)
        sent = 0
        try:
            while sent < total and not demo.stopping.is_set():
                piece = chunk[: min(len(chunk), total - sent)]
                self.wfile.write(piece)
                sent += len(piece)
                chunk = b"\0" * len(chunk)
        except OSError:
            pass  # the client stopped reading at its limit
        self.close_connection = True


class _Listener(http.server.ThreadingHTTPServer):
    """A ThreadingHTTPServer on 127.0.0.1 that keeps track of its connections so stop() can end them."""

    daemon_threads = True
    block_on_close = False  # DemoServer.stop joins the handler threads itself, with a deadline
    allow_reuse_address = True

    def __init__(self, demo: "DemoServer", port: int, tls: ssl.SSLContext | None = None):
        self.demo = demo
        self.tls = tls
        self.live: set = set()
        self.threads: set = set()
        self.lock = threading.Lock()
        super().__init__((LOOPBACK, port), _Handler)

    def process_request(self, request, client_address):
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True,
                             name=f"demo-handler-{self.server_address[1]}")
        with self.lock:
            self.threads = {x for x in self.threads if x.is_alive()}
            self.threads.add(t)
            self.live.add(request)
        t.start()

    def finish_request(self, request, client_address):
        if self.tls is not None:
            # The handshake runs here, in the handler's thread, so a silent client blocks nobody else.
            request.settimeout(SOCKET_TIMEOUT)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # the client refused our certificate: the TLS failure the demo plays
            with self.lock:
                self.live.add(request)
            try:
                super().finish_request(request, client_address)
            finally:
                with self.lock:
                    self.live.discard(request)
                request.close()
            return
        super().finish_request(request, client_address)

    def shutdown_request(self, request):
        with self.lock:
            self.live.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError, OSError, ValueError)):
            return  # clients hanging up on stalls, resets and huge bodies is the point of the demo
        sys.stderr.write(f"demo server: error answering {client_address}: {type(exc).__name__}: {exc}\n")

    def end_connections(self) -> None:
        with self.lock:
            live = list(self.live)
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DemoServer:
    """Serves a demo set on 127.0.0.1, with (faults=True) every failure the study met on the web.

    Use as `with DemoServer(dir) as srv:` or start()/stop(). Listeners, all on 127.0.0.1:
      base_url       http://127.0.0.1:PORT  — the images and the fault routes (ROUTES)
      tls_base_url   https://127.0.0.1:PORT — the same routes behind a self-signed certificate
      refused_port   a port bound but never listening: connections are refused
    DNS failures need no listener: URLs under the reserved .invalid TLD (dns_url) never resolve.
    port: None tries defaults.DEMO_PORT (stable URLs let a rerun resume) then any free port;
    0 takes any free port; another number takes exactly that port.
    """

    def __init__(self, demo_dir: str, faults: bool = True, seed: int = 0, port: int | None = None,
                 stall_seconds: float = defaults.DEMO_STALL_SECONDS,
                 too_large_bytes: int = DOWNLOAD.defaults.max_bytes + 1, verbose: bool = False):
        self.demo_dir = demo_dir
        self.faults = faults
        self.seed = seed
        self.port = port
        self.stall_seconds = float(stall_seconds)
        self.too_large_bytes = int(too_large_bytes)
        self.verbose = verbose
        self.images: dict[str, str] = {}
        self.stopping = threading.Event()
        self._attempts: dict[str, int] = {}
        self._attempts_lock = threading.Lock()
        self._listeners: list[_Listener] = []
        self._threads: list[threading.Thread] = []
        self._refused: socket.socket | None = None
        self.base_url = ""
        self.tls_base_url = ""
        self.refused_port = 0

    # ------------------------------------------------------------------------------- lifecycle

    def __enter__(self) -> "DemoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return bool(self._listeners) and not self.stopping.is_set()

    def start(self) -> "DemoServer":
        """Loads the set's index and starts the listeners; on any failure stops what it started and raises."""
        if self._listeners:
            raise RuntimeError(f"demo server already running at {self.base_url}")
        labels = load_labels(self.demo_dir)
        images_dir = os.path.join(self.demo_dir, IMAGES_DIR)
        self.images = {n: os.path.join(images_dir, n) for n in labels["name"]}
        self.stopping.clear()
        try:
            main = self._listen(self.port, 0, tls=None)
            self.base_url = f"http://{LOOPBACK}:{main.server_address[1]}"
            if self.faults:
                ctx = self._tls_context()
                tls = self._listen(None if self.port is None else 0, 1, tls=ctx)
                self.tls_base_url = f"https://{LOOPBACK}:{tls.server_address[1]}"
                self._refused = self._bind_refused(None if self.port is None else 0)
                self.refused_port = self._refused.getsockname()[1]
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stops every listener, ends stalled handlers and closes their connections. Safe to call twice."""
        self.stopping.set()
        for lst in self._listeners:
            lst.shutdown()
        for t in self._threads:
            t.join(JOIN_SECONDS)
        deadline = time.monotonic() + JOIN_SECONDS
        for lst in self._listeners:
            lst.server_close()
            lst.end_connections()
            with lst.lock:
                threads = list(lst.threads)
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
        if self._refused is not None:
            self._refused.close()
            self._refused = None
        self._listeners, self._threads = [], []

    def _listen(self, port: int | None, offset: int, tls: ssl.SSLContext | None) -> _Listener:
        lst = None
        if port is None:
            try:
                lst = _Listener(self, defaults.DEMO_PORT + offset, tls) if defaults.DEMO_PORT else None
            except OSError:
                lst = None  # taken: any free port will do
        if lst is None:
            try:
                lst = _Listener(self, port or 0, tls)
            except OSError as e:
                raise OSError(e.errno, f"cannot listen on {LOOPBACK}:{port or 0} ({e.strerror}); "
                                       "pick another --port or leave it out to take a free one") from None
        t = threading.Thread(target=lst.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                             name=f"demo-server-{lst.server_address[1]}")
        self._listeners.append(lst)
        self._threads.append(t)
        t.start()
        return lst

    @staticmethod
    def _bind_refused(port: int | None) -> socket.socket:
        # Bound but never listening: the port stays ours, and Linux answers a connect with RST.
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((LOOPBACK, defaults.DEMO_PORT + 2 if port is None and defaults.DEMO_PORT else 0))
        except OSError:
            s.bind((LOOPBACK, 0))
        return s

    @staticmethod
    def _tls_context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="demo-tls-") as d:
            cert, key = _self_signed(d)
            ctx.load_cert_chain(cert, key)
        return ctx

    # ----------------------------------------------------------------------------- what it serves

    def read(self, name: str) -> bytes:
        with open(self.images[name], "rb") as f:
            return f.read()

    def content_type(self, name: str) -> str:
        # The web mislabels some images: a few come as octet-stream or as JPEG whatever they are.
        h = int(hashlib.sha256(f"{self.seed}:{name}".encode()).hexdigest()[:8], 16) % 40
        if h == 0:
            return "application/octet-stream"
        if h == 1:
            return "image/jpeg"
        return faces.CONTENT_TYPES[name.rsplit(".", 1)[-1]]

    def count_attempt(self, path: str) -> int:
        """How many times this path has been asked for, this one included (transient faults pass on the 2nd)."""
        with self._attempts_lock:
            self._attempts[path] = self._attempts.get(path, 0) + 1
            return self._attempts[path]

    # ------------------------------------------------------------------------------------- URLs

    def url(self, route: str, name: str, arg: str | int | None = None) -> str:
        """The URL of image `name` through `route` (a ROUTES key, or 'tls', 'refused', 'dns')."""
        if not self.base_url:
            raise RuntimeError("the demo server has no address yet; start() it before asking for URLs")
        if route == "tls":
            return f"{self.tls_base_url}/img/{name}"
        if route == "refused":
            return f"http://{LOOPBACK}:{self.refused_port}/img/{name}"
        if route == "dns":
            # RFC 6761: .invalid never resolves, and the download step knows it without asking a resolver.
            stem = name.rsplit(".", 1)[0]
            return f"http://{stem}.faces.invalid/img/{name}"
        if route == "cdn":
            return f"{self.base_url}/cdn/{arg or 'w_128,h_128,c_fill'}/{name}"
        if route in ("status", "chain"):
            return f"{self.base_url}/{route}/{arg if arg is not None else 0}/{name}"
        if route not in ROUTES:
            raise ValueError(f"unknown demo route {route!r}; expected one of {sorted(ROUTES) + ['dns', 'refused', 'tls']}")
        return f"{self.base_url}/{route}/{name}"
