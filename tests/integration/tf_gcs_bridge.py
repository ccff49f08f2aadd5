"""Points TensorFlow's built-in gs:// filesystem at the loopback Cloud Storage emulator, for tests.

Why this exists: the train step hands gs:// shard paths to tf.data.TFRecordDataset, and tf.io.gfile
reads and writes gs:// too. Those go through TensorFlow's own GCS filesystem (C++, libcurl inside
libtensorflow_framework), not google-cloud-storage, so STORAGE_EMULATOR_HOST means nothing to it and
it has no endpoint override: its JSON API calls (stat, list, delete, uploads) always go to
https://www.googleapis.com/storage/v1 and .../upload/storage/v1, its reads to
https://storage.googleapis.com/<bucket>/<object> with a Range header. (The modular plugin
tensorflow-io-gcs-filesystem, which can be pointed elsewhere, crashes in this environment.) What
TensorFlow does honour:

- GOOGLE_AUTH_TOKEN_FOR_TESTING: a bearer token, so no credential lookup and no metadata server;
- NO_GCE_CHECK: no probe of the GCE metadata server;
- CURL_CA_BUNDLE: the CA bundle its libcurl verifies servers against;
- https_proxy / HTTPS_PROXY: libcurl tunnels https through an HTTP CONNECT proxy;
- GCS_RETRY_CONFIG_* and GCS_*_CACHE_MAX_AGE: retries and caches, read once per process.

So `tf_gcs_bridge(emulator_url)` makes a throwaway CA and a certificate for those two hosts, runs an
HTTP CONNECT proxy on 127.0.0.1 that accepts tunnels to them on port 443 (and to nothing else),
terminates TLS there with that certificate, and forwards each decrypted HTTP/1.1 request to the
emulator over plain TCP. It sets the variables above in os.environ while it runs (restoring them
after) and yields them. TensorFlow reads its GCS settings and keeps its stat cache once per process,
from the first import: start TensorFlow in a subprocess inside the context (it inherits os.environ).
In a process that imported TensorFlow earlier, gs:// still reaches the emulator, but with
TensorFlow's default retries (minutes before an error surfaces) and a stat cache that can answer
for an object of an earlier test's emulator.

The forwarding is per request, not a blind byte pump, for two reasons:
- gcp-storage-emulator answers HTTP/1.0 and closes the connection after each response (and serves
  one request at a time), while libcurl keeps its tunnel open for the next request: the bridge
  keeps the tunnel and opens one emulator connection per request.
- The emulator builds the Location of a resumable upload from the Host header, as
  http://www.googleapis.com/upload/...; TensorFlow PUTs the data there, and plain http would go
  around the proxy to the real host. The bridge rewrites that scheme to https (a test-only
  adaptation; the emulator package is left alone).
TensorFlow's requests carry Expect: 100-continue, and its upload PUTs a chunked body (besides a
Content-Length): the bridge answers 100 Continue at once and hands the emulator a plain body.

The bridge records each forwarded request as (method, path, status) in `Bridge.requests`, so a test
can check that TensorFlow's traffic went through it.
"""
from __future__ import annotations

import contextlib
import datetime
import http.client
import os
import socket
import socketserver
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from urllib.parse import urlparse

# TensorFlow's JSON API calls (stat, list, delete, uploads) go to www.googleapis.com/storage/v1 and
# www.googleapis.com/upload/storage/v1; its reads to storage.googleapis.com/<bucket>/<object>.
GCS_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
TIMEOUT_S = 30.0  # every socket read and write of the bridge: a test fails, it never hangs
_MAX_LINE = 65536
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "expect", "content-length"}


def make_certificates(folder: str) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for GCS_HOSTS: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tf-gcs-bridge test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GCS_HOSTS[0])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in GCS_HOSTS]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = tuple(os.path.join(folder, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


class _Closed(Exception):
    """The client closed its side, or sent something that is not HTTP/1.1."""


def _read_head(rfile) -> tuple[str, list[tuple[str, str]]]:
    """A request line and its headers; _Closed at a clean end of stream."""
    line = rfile.readline(_MAX_LINE)
    while line in (b"\r\n", b"\n"):  # tolerated between requests
        line = rfile.readline(_MAX_LINE)
    if not line:
        raise _Closed()
    headers = []
    while True:
        h = rfile.readline(_MAX_LINE)
        if not h:
            raise _Closed()
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return line.decode("latin-1").rstrip("\r\n"), headers


def _header(headers, name: str, default: str = "") -> str:
    for k, v in headers:
        if k.lower() == name:
            return v
    return default


def _read_body(rfile, headers) -> bytes:
    if "chunked" in _header(headers, "transfer-encoding").lower():
        out = bytearray()
        while True:
            size_line = rfile.readline(_MAX_LINE)
            if not size_line:
                raise _Closed()
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return bytes(out)
            chunk = rfile.read(size)
            if len(chunk) != size:
                raise _Closed()
            out += chunk
            rfile.readline(_MAX_LINE)
    n = int(_header(headers, "content-length", "0") or 0)
    body = rfile.read(n) if n else b""
    if len(body) != n:
        raise _Closed()
    return body


class _Handler(socketserver.BaseRequestHandler):
    server: "_ProxyServer"

    def handle(self):
        sock = self.request
        sock.settimeout(TIMEOUT_S)
        self.server.track(sock)
        try:
            # Unbuffered: not one byte past the CONNECT request's head may be taken from the socket
            # (the TLS handshake follows on it).
            rfile = sock.makefile("rb", buffering=0)
            try:
                line, _headers = _read_head(rfile)
            finally:
                rfile.close()
            method, target, *_ = line.split(" ") + ["", ""]
            if method.upper() != "CONNECT" or target.lower() not in {f"{h}:443" for h in GCS_HOSTS}:
                # Only TensorFlow's tunnel to Cloud Storage: anything else would leave the machine.
                self.server.log.append(("CONNECT", target, 403))
                sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tls = self.server.tls.wrap_socket(sock, server_side=True)
            self.server.track(tls)
            try:
                self._serve(tls)
            finally:
                self.server.untrack(tls)
                with contextlib.suppress(OSError):
                    tls.close()
        except (_Closed, OSError, ValueError, http.client.HTTPException):
            pass  # the client went away, or the bridge is closing: nothing to answer
        finally:
            self.server.untrack(sock)

    def _serve(self, tls):
        rfile = tls.makefile("rb")
        try:
            while True:
                line, headers = _read_head(rfile)
                method, _, rest = line.partition(" ")
                path, _, _version = rest.rpartition(" ")
                if "100-continue" in _header(headers, "expect").lower():
                    tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = _read_body(rfile, headers)
                status, reason, out_headers, out_body = self.server.forward(method, path, headers, body)
                head = [f"HTTP/1.1 {status} {reason}"]
                for k, v in out_headers:
                    if k.lower() in _HOP_BY_HOP:
                        continue
                    if k.lower() == "location" and any(v.startswith(f"http://{h}/") for h in GCS_HOSTS):
                        v = "https://" + v[len("http://"):]  # see the module docstring
                    head.append(f"{k}: {v}")
                if not (method.upper() == "HEAD" or 100 <= status < 200 or status in (204, 304)):
                    head.append(f"Content-Length: {len(out_body)}")
                else:
                    out_body = b""
                closing = _header(headers, "connection").lower() == "close"
                head.append("Connection: close" if closing else "Connection: keep-alive")
                tls.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + out_body)
                if closing:
                    return
        finally:
            rfile.close()


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int], tls: ssl.SSLContext, log: list):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream, self.tls, self.log = upstream, tls, log
        self._socks: set = set()
        self._socks_lock = threading.Lock()

    def process_request_thread(self, request, client_address):
        threading.current_thread().name = "tf-gcs-bridge-tunnel"  # named, so tests can check none is left
        super().process_request_thread(request, client_address)

    def track(self, sock) -> None:
        with self._socks_lock:
            self._socks.add(sock)

    def untrack(self, sock) -> None:
        with self._socks_lock:
            self._socks.discard(sock)

    def close_clients(self) -> None:
        with self._socks_lock:
            socks, self._socks = list(self._socks), set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def forward(self, method: str, path: str, headers, body: bytes):
        """One request to the emulator on a fresh connection (it closes each one after answering)."""
        conn = http.client.HTTPConnection(*self.upstream, timeout=TIMEOUT_S)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                if k.lower() not in _HOP_BY_HOP:
                    conn.putheader(k, v)  # Host stays the Google one: the emulator's Locations name it
            if body or method.upper() in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            out = resp.read()
            self.log.append((method, path, resp.status))
            return resp.status, resp.reason, resp.getheaders(), out
        finally:
            conn.close()


@dataclass
class Bridge:
    proxy_url: str
    ca_file: str
    env: dict  # the variables TensorFlow needs, for a subprocess's environment
    requests: list = field(default_factory=list)  # (method, path, status) per forwarded request


@contextlib.contextmanager
def tf_gcs_bridge(emulator_url: str):
    """Routes TensorFlow's gs:// (https to GCS_HOSTS) to the emulator at emulator_url; yields a Bridge.

    Sets the Bridge's env in os.environ for the duration (restored after): start TensorFlow
    subprocesses inside the context with os.environ (or bridge.env on top of it).
    """
    u = urlparse(emulator_url)
    upstream = (u.hostname or "127.0.0.1", u.port or 80)
    with tempfile.TemporaryDirectory(prefix="tf-gcs-bridge-") as folder:
        ca_file, cert_file, key_file = make_certificates(folder)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert_file, key_file)
        log: list = []
        server = _ProxyServer(upstream, tls, log)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  name="tf-gcs-bridge", daemon=True)
        thread.start()
        proxy_url = f"http://127.0.0.1:{server.server_address[1]}"
        env = {
            "https_proxy": proxy_url,
            "HTTPS_PROXY": proxy_url,
            # The emulator itself (google-cloud-storage's plain http) and any other loopback
            # traffic stay direct.
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": ca_file,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "bridge-test-token",
            "NO_GCE_CHECK": "true",
            # Fail fast instead of TensorFlow's 10 retries over minutes, and cache no stat or
            # listing: a test reads back at once what another client just wrote.
            "GCS_RETRY_CONFIG_MAX_RETRIES": "2",
            "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "100000",
            "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "1000000",
            "GCS_STAT_CACHE_MAX_AGE": "0",
            "GCS_MATCHING_PATHS_CACHE_MAX_AGE": "0",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield Bridge(proxy_url, ca_file, dict(env), log)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            server.shutdown()
            server.close_clients()
            server.server_close()
            thread.join(TIMEOUT_S)
