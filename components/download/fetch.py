"""One image URL fetched once: pooled connections, a per-host limit, a total deadline, and every failure classified."""
from __future__ import annotations

import email.utils
import http.client
import io
import ipaddress
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urljoin

import urllib3
from PIL import Image
from urllib3 import exceptions as u3e
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import parse_url

from components.common.ledger import is_transient

CHUNK = 64 * 1024
# An error page up to this size is read to the end so that its connection can be reused.
DISCARD_LIMIT = 64 * 1024
# How often the deadline watchdog looks at the requests in flight.
WATCHDOG_INTERVAL = 0.05

# Magic bytes -> contract 2's extension, and the Pillow decoder that must agree with them.
_MAGIC = (
    (b"\xff\xd8\xff", "jpg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}


@dataclass
class Outcome:
    """What one fetch of one URL came to: ok with the image, or one error class and a message."""

    error_class: str
    message: str
    http_status: int | None = None
    body: bytes | None = None
    fmt: str | None = None
    width: int | None = None
    height: int | None = None
    retry_after: float | None = None  # seconds the server asked for (Retry-After)

    @property
    def ok(self) -> bool:
        return self.error_class == "ok"

    @property
    def transient(self) -> bool:
        return is_transient(self.error_class, self.http_status)


class ImageProblem(Exception):
    """A body that is not an acceptable image: error_class is not_image or too_large."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class
        self.message = message


class PrivateAddressRefused(Exception):
    """A connection that reached a private, loopback or link-local address while allow_private is off."""


class _Done(Exception):
    """Carries an outcome out of a helper of Fetcher._follow."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.message)
        self.outcome = outcome


# --- the image check -------------------------------------------------------------------------

def sniff_format(body: bytes) -> str | None:
    """Contract 2's extension from the magic bytes (jpg png gif bmp webp), or None."""
    for magic, fmt in _MAGIC:
        if body.startswith(magic):
            return fmt
    if len(body) >= 12 and body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "webp"
    return None


def inspect_image(body: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(format, width, height) of a body decoded in full; raises ImageProblem when it is not an image we keep.

    The decision is the decoder's, never the Content-Type's. The pixel count is checked from the
    header before any pixel is decoded, so a decompression bomb costs nothing.
    """
    if not body:
        raise ImageProblem("not_image", "empty body")
    fmt = sniff_format(body)
    if fmt is None:
        head = body[:256].lstrip().lower()
        if head.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<")):
            raise ImageProblem("not_image", "an HTML/XML page, not an image")
        try:
            with Image.open(io.BytesIO(body)) as im:
                other = im.format
        except Exception:  # noqa: BLE001 - anything Pillow cannot open is simply not an image
            other = None
        if other:
            raise ImageProblem("not_image", f"a {other} image; only jpg png gif bmp webp are kept")
        raise ImageProblem("not_image", f"undecodable: no image signature (starts with {body[:8]!r})")
    try:
        im = Image.open(io.BytesIO(body), formats=[PIL_FORMATS[fmt]])
    except Image.DecompressionBombError as e:
        raise ImageProblem("too_large", f"decompression bomb: {e}") from e
    except Exception as e:  # noqa: BLE001
        raise ImageProblem("not_image", f"undecodable {fmt}: {e}") from e
    with im:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageProblem("not_image", f"{fmt} of size {width}x{height}")
        if width * height > max_pixels:
            raise ImageProblem("too_large", f"{width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
        try:
            if fmt == "jpg":
                # Decoding at 1/8 scale reads every byte of the stream (so truncation is still
                # caught) with 1/64 of the memory and time.
                im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            im.load()
        except Image.DecompressionBombError as e:
            raise ImageProblem("too_large", f"decompression bomb: {e}") from e
        except Exception as e:  # noqa: BLE001
            raise ImageProblem("not_image", f"truncated or corrupt {fmt}: {e}") from e
    return fmt, int(width), int(height)


# --- retries -----------------------------------------------------------------------------------

def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2^(attempt-1))) seconds."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0.0, ceiling)


# --- classification ------------------------------------------------------------------------------

def classify_status(status: int) -> str:
    if status == 404:
        return "http_404"
    if 400 <= status < 500:
        return "http_4xx"
    if 500 <= status < 600:
        return "http_5xx"
    return "network"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and the exceptions urllib3 and http.client tuck into args/reason."""
    out: list[BaseException] = []
    stack: list = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or any(e is seen for seen in out):
            continue
        out.append(e)
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return out


def classify_exception(exc: BaseException) -> tuple[str, str]:
    """(error_class, message) for an exception raised while fetching."""
    chain = _exception_chain(exc)

    def has(*types) -> BaseException | None:
        return next((e for e in chain if isinstance(e, types)), None)

    text = f"{type(exc).__name__}: {exc}"
    if e := has(PrivateAddressRefused):
        return "invalid_url", str(e)
    if has(u3e.LocationParseError, u3e.LocationValueError):
        return "invalid_url", f"cannot parse the URL: {exc}"
    if has(u3e.NameResolutionError, socket.gaierror):
        return "dns", f"name resolution failed: {exc}"
    if has(ConnectionRefusedError):
        return "connection_refused", f"connection refused: {exc}"
    if has(ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.RemoteDisconnected):
        return "connection_reset", f"connection reset or closed by the server: {exc}"
    if has(ssl.SSLCertVerificationError):
        return "tls", f"TLS verification failed: {exc}"
    # urllib3 makes NewConnectionError a ConnectTimeoutError: only the exact class is a connect timeout.
    if any(type(e) is u3e.ConnectTimeoutError for e in chain):
        return "timeout", f"connect timeout: {exc}"
    if has(u3e.ReadTimeoutError, TimeoutError):
        return "timeout", f"read timeout: {exc}"
    if has(ssl.SSLError, u3e.SSLError):
        return "tls", f"TLS failed: {exc}"
    if has(http.client.IncompleteRead, u3e.IncompleteRead):
        return "network", f"the body ended before its Content-Length: {exc}"
    return "network", text


# --- addresses -----------------------------------------------------------------------------------

def is_public_address(ip: str) -> bool:
    """False for private, loopback, link-local, reserved, multicast and unspecified addresses."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def is_reserved_invalid(host: str) -> bool:
    """Hosts under the RFC 6761 `.invalid` TLD: they never resolve, so no resolver is asked."""
    h = host.rstrip(".").lower()
    return h == "invalid" or h.endswith(".invalid")


# --- the deadline watchdog and the connection classes that report to it -----------------------------

# Guards which connection belongs to which request, so the watchdog never cuts a connection
# that has gone back to the pool and now serves another request.
_BIND_LOCK = threading.Lock()
_LOCAL = threading.local()


class _Attempt:
    __slots__ = ("deadline", "allow_private", "conn", "expired")

    def __init__(self, deadline: float, allow_private: bool):
        self.deadline = deadline
        self.allow_private = allow_private
        self.conn = None
        self.expired = False


class _ConnMixin:
    _attempt = None

    def _new_conn(self):
        sock = super()._new_conn()
        attempt = getattr(_LOCAL, "attempt", None)
        if attempt is not None and not attempt.allow_private:
            # Checked on the connected socket, so a name that re-resolves elsewhere (DNS rebinding) is caught too.
            try:
                peer = sock.getpeername()[0]
            except OSError:
                peer = "?"
            if not is_public_address(peer):
                sock.close()
                raise PrivateAddressRefused(
                    f"{self.host} connected to {peer}, a private, loopback or link-local address; "
                    "refused because allow_private is off")
        return sock

    def request(self, *args, **kwargs):
        attempt = getattr(_LOCAL, "attempt", None)
        with _BIND_LOCK:
            self._attempt = attempt
            if attempt is not None:
                attempt.conn = self
        return super().request(*args, **kwargs)


class _HTTPConnection(_ConnMixin, HTTPConnection):
    pass


class _HTTPSConnection(_ConnMixin, HTTPSConnection):
    pass


class _PoolMixin:
    def _put_conn(self, conn):
        if conn is not None:
            with _BIND_LOCK:
                attempt = getattr(conn, "_attempt", None)
                conn._attempt = None
                if attempt is not None and attempt.conn is conn:
                    attempt.conn = None
        super()._put_conn(conn)


class _HTTPPool(_PoolMixin, HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_PoolMixin, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _Watchdog(threading.Thread):
    """Cuts the socket of a request past its total deadline: a server that drips a byte a second
    never trips a read timeout, so the total is enforced from outside."""

    def __init__(self):
        super().__init__(name="download-deadline", daemon=True)
        self._active: set[_Attempt] = set()
        self._stop_event = threading.Event()

    def add(self, attempt: _Attempt) -> None:
        with _BIND_LOCK:
            self._active.add(attempt)

    def discard(self, attempt: _Attempt) -> None:
        with _BIND_LOCK:
            self._active.discard(attempt)

    def stop(self) -> None:
        self._stop_event.set()

    def expire_all(self) -> None:
        with _BIND_LOCK:
            for attempt in self._active:
                attempt.deadline = 0.0

    def run(self) -> None:
        while not self._stop_event.wait(WATCHDOG_INTERVAL):
            now = time.monotonic()
            with _BIND_LOCK:
                for attempt in self._active:
                    if attempt.expired or now < attempt.deadline:
                        continue
                    attempt.expired = True
                    sock = getattr(attempt.conn, "sock", None)
                    if sock is not None:
                        try:
                            # The plain socket's shutdown, also under TLS: it wakes a blocked read at once.
                            socket.socket.shutdown(sock, socket.SHUT_RDWR)
                        except OSError:
                            pass


# --- the fetcher ---------------------------------------------------------------------------------

class Fetcher:
    """Fetches one URL at a time per calling thread; share one between the threads of a pool."""

    def __init__(
        self,
        *,
        per_host: int,
        timeout: float,
        deadline: float,
        max_bytes: int,
        max_pixels: int,
        max_redirects: int,
        allow_private: bool,
        user_agent: str,
        num_pools: int = 256,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.per_host = per_host
        self.timeout = timeout
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.max_redirects = max_redirects
        self.allow_private = allow_private
        self._pm = urllib3.PoolManager(
            num_pools=num_pools,
            maxsize=per_host,
            block=False,
            retries=False,
            ssl_context=ssl_context or ssl.create_default_context(),
            headers={"User-Agent": user_agent, "Accept": "image/*,*/*;q=0.5"},
        )
        self._pm.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self.requests = 0
        self._watchdog = _Watchdog()
        self._watchdog.start()

    def close(self) -> None:
        self._watchdog.stop()
        self._pm.clear()

    def abort(self) -> None:
        """Cuts every request in flight now (a stop must not wait out the deadlines)."""
        self._watchdog.expire_all()

    def fetch(self, url: str) -> Outcome:
        """One attempt at url, redirects followed, under one total deadline; never raises."""
        attempt = _Attempt(time.monotonic() + self.deadline, self.allow_private)
        _LOCAL.attempt = attempt
        self._watchdog.add(attempt)
        try:
            return self._follow(url, attempt)
        except _Done as d:
            return d.outcome
        except Exception as e:  # noqa: BLE001 - every failure becomes a ledger row, never a crash
            if attempt.expired:
                return Outcome("timeout", f"total deadline of {self.deadline:g} s exceeded")
            cls, message = classify_exception(e)
            return Outcome(cls, message)
        finally:
            self._watchdog.discard(attempt)
            _LOCAL.attempt = None

    def _follow(self, url: str, attempt: _Attempt) -> Outcome:
        visited: set[str] = set()
        current = url
        status = None
        for _ in range(self.max_redirects + 1):
            target, host = self._check_url(current)
            visited.add(target)
            with self._host_slot(host, attempt):
                remaining = attempt.deadline - time.monotonic()
                if remaining <= 0:
                    raise _Done(Outcome("timeout", f"total deadline of {self.deadline:g} s exceeded", status))
                per_op = min(self.timeout, remaining)
                with self._lock:
                    self.requests += 1
                resp = self._pm.urlopen(
                    "GET", target, redirect=False, retries=False, preload_content=False,
                    timeout=urllib3.Timeout(connect=per_op, read=per_op),
                )
                try:
                    status = resp.status
                    if 300 <= status < 400:
                        location = resp.headers.get("Location")
                        self._discard(resp)
                        if not location or not location.strip():
                            return Outcome("redirect", f"HTTP {status} without a Location header", status)
                        nxt = urljoin(target, location.strip())
                        if not nxt.lower().startswith(("http://", "https://")):
                            return Outcome("redirect", f"HTTP {status} to {nxt!r}, not an http(s) URL", status)
                        try:
                            normalized = parse_url(nxt).url
                        except u3e.LocationParseError:
                            normalized = nxt
                        if nxt in visited or normalized in visited:
                            return Outcome("redirect", f"redirect loop: HTTP {status} back to {nxt}", status)
                        current = nxt
                        continue
                    if not 200 <= status < 300:
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                        self._discard(resp)
                        reason = f" {resp.reason}" if resp.reason else ""
                        return Outcome(classify_status(status), f"HTTP {status}{reason}", status, retry_after=retry_after)
                    body = self._read_body(resp, attempt, status)
                finally:
                    resp.release_conn()
            if attempt.expired:
                raise _Done(Outcome("timeout", f"total deadline of {self.deadline:g} s exceeded", status))
            try:
                fmt, width, height = inspect_image(body, self.max_pixels)
            except ImageProblem as p:
                return Outcome(p.error_class, p.message, status)
            return Outcome("ok", "", status, body=body, fmt=fmt, width=width, height=height)
        return Outcome("redirect", f"more than {self.max_redirects} redirects", status)

    def _check_url(self, url) -> tuple[str, str]:
        if not isinstance(url, str) or not url.strip():
            raise _Done(Outcome("invalid_url", "empty URL"))
        try:
            parsed = parse_url(url.strip())
        except u3e.LocationParseError as e:
            raise _Done(Outcome("invalid_url", f"cannot parse the URL: {e}")) from e
        scheme = (parsed.scheme or "").lower()
        if scheme not in ("http", "https"):
            what = f"scheme {parsed.scheme!r}" if parsed.scheme else "no scheme"
            raise _Done(Outcome("invalid_url", f"{what}: only http:// and https:// URLs are fetched"))
        if not parsed.host:
            raise _Done(Outcome("invalid_url", "the URL names no host"))
        host = parsed.host.strip("[]").lower()
        if is_reserved_invalid(host):
            raise _Done(Outcome("dns", f"{host}: the reserved .invalid domain never resolves (RFC 6761)"))
        if not self.allow_private:
            self._refuse_private(host, parsed.port or (443 if scheme == "https" else 80))
        return parsed.url, host

    def _refuse_private(self, host: str, port: int) -> None:
        try:
            addresses = [str(ipaddress.ip_address(host))]
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as e:
                raise _Done(Outcome("dns", f"{host}: name resolution failed: {e}")) from e
            addresses = [info[4][0] for info in infos]
        private = [a for a in addresses if not is_public_address(a)]
        if private:
            raise _Done(Outcome(
                "invalid_url",
                f"{host} is {private[0]}, a private, loopback or link-local address; refused because allow_private is off"))

    def _host_slot(self, host: str, attempt: _Attempt):
        with self._lock:
            sem = self._hosts.get(host)
            if sem is None:
                sem = self._hosts[host] = threading.BoundedSemaphore(self.per_host)
        return _Slot(sem, max(0.0, attempt.deadline - time.monotonic()), host, self)

    def _read_body(self, resp, attempt: _Attempt, status: int) -> bytes:
        length = resp.headers.get("Content-Length", "").strip()
        if length.isdigit() and int(length) > self.max_bytes:
            resp.close()
            raise _Done(Outcome("too_large", f"Content-Length {length} bytes is over the limit of {self.max_bytes}", status))
        buf = bytearray()
        while True:
            if time.monotonic() >= attempt.deadline:
                resp.close()
                raise _Done(Outcome("timeout", f"total deadline of {self.deadline:g} s exceeded after {len(buf)} bytes", status))
            # read1 returns what one read brings, so the deadline is looked at between drips.
            chunk = resp.read1(CHUNK)
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > self.max_bytes:
                resp.close()
                raise _Done(Outcome("too_large", f"the body went over the limit of {self.max_bytes} bytes", status))

    @staticmethod
    def _discard(resp) -> None:
        length = resp.headers.get("Content-Length", "").strip()
        try:
            if length.isdigit() and int(length) <= DISCARD_LIMIT:
                resp.read(DISCARD_LIMIT)
            else:
                resp.close()
        except Exception:  # noqa: BLE001 - an error page we could not read costs only its connection
            resp.close()


class _Slot:
    """One of a host's per_host connections, waited for no longer than the deadline allows."""

    def __init__(self, sem: threading.BoundedSemaphore, wait: float, host: str, fetcher: Fetcher):
        self._sem, self._wait, self._host, self._fetcher = sem, wait, host, fetcher

    def __enter__(self):
        if not self._sem.acquire(timeout=self._wait):
            raise _Done(Outcome(
                "timeout",
                f"waited {self._wait:.1f} s for one of the {self._fetcher.per_host} connections to {self._host}"))
        return self

    def __exit__(self, *exc):
        self._sem.release()
        return False
