"""Fetch untrusted image URLs safely: scheme and address checks on every hop, deadline, byte cap."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpcore
import httpx

from modal_workers.reasons import ImageRefused, http_reason
from modal_workers.types import FetchLimits

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "modal-faiss-builder/0.1 (+image indexer)"
BACKOFF_S = 0.2


class TransientRefusal(ImageRefused):
    """A failure worth retrying: connect error, reset, 5xx, 429."""


class Deadline:
    """A total wall-clock budget measured with a monotonic clock."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def check(self) -> None:
        if self.remaining() <= 0:
            raise ImageRefused("fetch_timeout", f"deadline of {self.seconds:g}s passed")

    def timeout(self) -> httpx.Timeout:
        # A read gap may overshoot the deadline by at most this cap; the loop checks the rest.
        self.check()
        return httpx.Timeout(min(self.remaining(), max(1.0, self.seconds / 4)))


# The monotonic end of the current image's deadline, set by fetch_image_bytes for its thread.
# Every socket operation (connect, TLS handshake, each header and body read, each write) gets at
# most the time left, so a server dripping one header byte per second cannot outlast it.
CURRENT_DEADLINE: ContextVar[float | None] = ContextVar("fetch_deadline", default=None)


def time_left(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` shortened to what the current deadline leaves; `error` once nothing is left."""
    end = CURRENT_DEADLINE.get()
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise error("the per-image deadline passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every operation ends by the current image's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = time_left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self.inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync socket backend, with every stream bounded by the current deadline."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = time_left(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(
            self.inner.connect_tcp(host, port, bounded, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport on a connection pool that uses DeadlineBackend for its sockets."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=DeadlineBackend(),
        )


@contextmanager
def deadline_applies(deadline: Deadline) -> Iterator[None]:
    token = CURRENT_DEADLINE.set(deadline.end)
    try:
        yield
    finally:
        CURRENT_DEADLINE.reset(token)


def open_client(limits: FetchLimits) -> httpx.Client:
    """A fetch client; no kept-alive connections, so TLS is always checked for the hop's host."""
    pool_limits = httpx.Limits(max_connections=limits.threads, max_keepalive_connections=0)
    return httpx.Client(
        transport=DeadlineTransport(pool_limits),
        follow_redirects=False,
        trust_env=False,  # a proxy from the environment would bypass the address checks
        # identity: the byte cap then counts what is decoded (no gzip bombs)
        headers={"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"},
    )


class SharedClients:
    """One fetch client per pool size, built on first use and shared by every later call.

    Building a client costs ~30 ms of CPU (its TLS context); a Modal container keeps one of these
    for its lifetime. httpx's client and httpcore's pool are safe to use from many threads, and
    each image's deadline lives in its own thread's context (CURRENT_DEADLINE). `callers` calls
    may share a client at once: its pool holds `callers` x limits.threads connections.
    """

    def __init__(self, callers: int = 1) -> None:
        self.callers = max(1, callers)
        self._lock = threading.Lock()
        self._clients: dict[int, httpx.Client] = {}

    def get(self, limits: FetchLimits) -> httpx.Client:
        with self._lock:
            client = self._clients.get(limits.threads)
            if client is None:
                pool = dataclasses.replace(limits, threads=limits.threads * self.callers)
                client = self._clients[limits.threads] = open_client(pool)
            return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def fetch_image_bytes(url: str, limits: FetchLimits, client: httpx.Client) -> bytes:
    """The bytes of one image, or ImageRefused with a reason code; retries transient errors only."""
    if not is_http_url(url):
        return read_local_file(url, limits)
    deadline = Deadline(limits.timeout_s)
    for attempt in range(limits.retries + 1):
        try:
            with deadline_applies(deadline):
                return fetch_following_redirects(url, limits, client, deadline)
        except TransientRefusal as exc:
            delay = BACKOFF_S * 2**attempt
            if attempt == limits.retries or deadline.remaining() <= delay:
                raise ImageRefused(
                    exc.reason, f"{exc.message} (after {attempt + 1} attempts)"
                ) from exc
            time.sleep(delay)
    raise AssertionError("unreachable")


def is_http_url(url: str) -> bool:
    """Whether the URL names the http(s) scheme; the rest is judged when it is parsed."""
    scheme, colon, _ = url.strip().partition(":")
    return bool(colon) and scheme.lower() in ("http", "https")


def fetch_following_redirects(
    url: str, limits: FetchLimits, client: httpx.Client, deadline: Deadline
) -> bytes:
    """Follow redirects by hand so that every hop is checked like the first."""
    current = parse_http_url(url)
    for _ in range(limits.max_redirects + 1):
        address = resolve_checked(current, limits.allow_private_urls)
        location = fetch_one_hop(current, address, limits, client, deadline)
        if isinstance(location, bytes):
            return location
        current = parse_http_url(str(current.join(location)))
    raise ImageRefused("too_many_redirects", f"more than {limits.max_redirects} redirects")


def parse_http_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url.strip())
        host = parsed.host  # decoded lazily: an invalid IDNA label (xn--a) fails only here
    except (httpx.InvalidURL, ValueError) as exc:  # UnicodeError (idna) is a ValueError
        raise ImageRefused("bad_url", f"cannot parse URL: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise ImageRefused("bad_scheme", f"scheme {parsed.scheme!r} is not http(s)")
    if not host:
        raise ImageRefused("bad_url", "URL has no host")
    return parsed


def resolve_checked(url: httpx.URL, allow_private: bool) -> str:
    """Resolve the host, refuse it if any address is not global; return the IP to connect to."""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageRefused("dns_error", f"cannot resolve {url.host!r}: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            if not is_public_address(address):
                raise ImageRefused(
                    "private_address", f"{url.host!r} resolves to non-public address {address}"
                )
    return addresses[0]


NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: last 32 bits are IPv4
NAT64_LOCAL_USE = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: operator-defined layout
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated ::a.b.c.d (RFC 4291 2.5.5.1)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: mapped, compatible, NAT64, 6to4, Teredo."""
    if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d
        return [ip.ipv4_mapped]
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in IPV4_COMPATIBLE or ip in NAT64_WELL_KNOWN:  # ::a.b.c.d, 64:ff9b::a.b.c.d
        return [low32]
    if ip.sixtofour is not None:  # 2002:aabb:ccdd::/48
        return [ip.sixtofour]
    if ip.teredo is not None:  # 2001:0::/32: (server, client)
        return list(ip.teredo)
    return []


def is_public_address(address: str) -> bool:
    """True only for globally routable unicast addresses.

    An IPv6 address that embeds an IPv4 address (IPv4-mapped ::ffff:0:0/96, IPv4-compatible
    ::/96, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo 2001::/32) is judged by that IPv4 address:
    64:ff9b::a9fe:a9fe reaches 169.254.169.254 through a NAT64 gateway. The local-use NAT64 prefix
    64:ff9b:1::/48 has no fixed layout, so it is never public.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in NAT64_LOCAL_USE:
            return False
        carried = embedded_ipv4(ip)
        if carried:
            return all(v4.is_global and not v4.is_multicast for v4 in carried)
    return ip.is_global and not ip.is_multicast


def fetch_one_hop(
    url: httpx.URL, address: str, limits: FetchLimits, client: httpx.Client, deadline: Deadline
) -> bytes | str:
    """GET one hop at the checked address (no second DNS lookup): the body, or a redirect target."""
    request = client.build_request(
        "GET",
        url.copy_with(host=address),
        headers={"Host": url.netloc.decode("ascii")},
        extensions={"sni_hostname": url.host},
        timeout=deadline.timeout(),
    )
    try:
        response = client.send(request, stream=True)
        try:
            return read_response(response, limits, deadline)
        finally:
            response.close()
    except httpx.TimeoutException as exc:
        if deadline.remaining() <= 0:
            raise ImageRefused(
                "fetch_timeout", f"deadline of {deadline.seconds:g}s passed ({type(exc).__name__})"
            ) from exc
        raise ImageRefused("fetch_timeout", f"timed out: {type(exc).__name__}") from exc
    except (
        httpx.ConnectError,
        httpx.ReadError,
        httpx.WriteError,
        httpx.RemoteProtocolError,
    ) as exc:
        raise TransientRefusal("fetch_error", f"{type(exc).__name__}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise ImageRefused("fetch_error", f"{type(exc).__name__}: {exc}") from exc


def read_response(response: httpx.Response, limits: FetchLimits, deadline: Deadline) -> bytes | str:
    status = response.status_code
    if status in REDIRECT_STATUSES and "location" in response.headers:
        return response.headers["location"]
    if status == 429 or status >= 500:
        raise TransientRefusal(http_reason(status), f"HTTP {status}")
    if status >= 300:
        raise ImageRefused(http_reason(status), f"HTTP {status}")
    return read_capped(response, limits.max_bytes, deadline)


def read_capped(response: httpx.Response, max_bytes: int, deadline: Deadline) -> bytes:
    """Stream the body, stopping at the byte cap or the deadline, whichever comes first."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageRefused("too_large", f"Content-Length {declared} > {max_bytes} bytes")
    body = bytearray()
    for chunk in response.iter_raw():  # no chunk_size: it would buffer and delay the deadline check
        body += chunk
        if len(body) > max_bytes:
            raise ImageRefused("too_large", f"body exceeds {max_bytes} bytes")
        deadline.check()
    if not body:
        raise ImageRefused("empty_body", "the response has no body")
    return bytes(body)


def read_local_file(url: str, limits: FetchLimits) -> bytes:
    """A local catalog file: allowed only when the catalog is local (limits.local_root set)."""
    path = local_path(url, limits)
    if not path.is_file():
        raise ImageRefused("file_not_found", f"no such file: {path}")
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ImageRefused("too_large", f"{path} has {size} > {limits.max_bytes} bytes")
    if size == 0:
        raise ImageRefused("empty_body", f"{path} is empty")
    return path.read_bytes()


def local_path(url: str, limits: FetchLimits) -> Path:
    """Resolve a plain path (or file:// URL) against the local catalog's folder, and keep it there.

    Symlinks and `..` are resolved first; the result must lie inside `limits.local_allowed_root`
    when that is set, else inside `limits.local_root` (the catalog's folder). Anything else is
    refused as outside_catalog_folder, absolute paths and file:// URLs included.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if limits.local_root is None or scheme not in ("", "file"):
        raise ImageRefused("bad_scheme", f"{url[:80]!r}: only http(s) URLs are allowed here")
    if scheme == "file" and parts.netloc not in ("", "localhost"):
        raise ImageRefused("bad_url", f"{url[:80]!r}: file URLs name no host")
    raw = unquote(parts.path) if scheme == "file" else url
    root = Path(limits.local_root).resolve()
    allowed = Path(limits.local_allowed_root).resolve() if limits.local_allowed_root else root
    try:
        candidate = (root / raw).resolve()  # an absolute `raw` replaces the root, then is judged
    except (OSError, RuntimeError, ValueError) as exc:  # NUL bytes, symlink loops
        raise ImageRefused("bad_url", f"{url[:80]!r} is not a usable path") from exc
    if not candidate.is_relative_to(allowed):
        raise ImageRefused(
            "outside_catalog_folder",
            f"{url[:80]!r} resolves outside {allowed} (set an allowed image root to permit it)",
        )
    return candidate
