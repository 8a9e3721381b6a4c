"""The per-image deadline covers connect, response headers and body (issue 13 item 2).

A raw localhost socket server drips its response one byte at a time; every single read returns
well within httpx's per-read timeout, so only a deadline over the whole exchange can cut it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from modal_workers.fetch import fetch_image_bytes, open_client
from modal_workers.reasons import ImageRefused
from modal_workers.types import FetchLimits

DRIP_GAP_S = 0.3  # far below the per-read timeout, so each read alone never times out
DRIP_FOR_S = 15.0  # how long the server would keep a client that never gives up


class DripServer:
    """Accepts connections and sends `prefix`, then one byte of `drip` every DRIP_GAP_S."""

    def __init__(self, prefix: bytes, drip: bytes) -> None:
        self.prefix, self.drip = prefix, drip
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.accepted = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            threading.Thread(target=self.talk, args=(connection,), daemon=True).start()

    def talk(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)  # the request
                connection.sendall(self.prefix)
                ends = time.monotonic() + DRIP_FOR_S
                for byte in self.drip:
                    if self.stop.is_set() or time.monotonic() > ends:
                        return
                    connection.sendall(bytes([byte]))
                    time.sleep(DRIP_GAP_S)
            except OSError:
                return  # the client hung up: that is the point

    def __enter__(self) -> DripServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(2)
        self.listener.close()


@pytest.fixture
def header_drip() -> Iterator[DripServer]:
    # The status line arrives, then a header that never ends.
    with DripServer(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 1000) as server:
        yield server


@pytest.fixture
def status_drip() -> Iterator[DripServer]:
    # Not even the status line is complete.
    with DripServer(b"", b"HTTP/1.1 200 OK\r\n" + b"X" * 1000) as server:
        yield server


def timed_refusal(url: str, limits: FetchLimits) -> tuple[str, str, float]:
    started = time.monotonic()
    with open_client(limits) as client:
        try:
            fetch_image_bytes(url, limits, client)
        except ImageRefused as exc:
            return exc.reason, exc.message, time.monotonic() - started
    return "ok", "", time.monotonic() - started


@pytest.mark.parametrize("server_name", ["header_drip", "status_drip"])
def test_dripping_headers_are_cut_at_the_deadline(
    server_name: str, request: pytest.FixtureRequest
) -> None:
    server: DripServer = request.getfixturevalue(server_name)
    limits = FetchLimits(allow_private_urls=True, timeout_s=2.0, retries=2)
    reason, message, elapsed = timed_refusal(f"http://127.0.0.1:{server.port}/a.jpg", limits)
    assert reason == "fetch_timeout"
    assert "deadline of 2s passed" in message
    assert elapsed < 3.0, f"took {elapsed:.1f}s under a 2s deadline"
    assert server.accepted == 1  # a deadline is not retried


def test_a_fast_server_is_unaffected_by_the_deadline_transport() -> None:
    body = b"\x89PNG\r\n\x1a\n" + b"x" * 100
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    with DripServer(head.encode() + body, b"") as server:
        limits = FetchLimits(allow_private_urls=True, timeout_s=2.0)
        with open_client(limits) as client:
            assert fetch_image_bytes(f"http://127.0.0.1:{server.port}/", limits, client) == body
