"""BuildSession: what it sends to the embedding backend and what it records without sending; its
chunks of calls on the shared in-flight window (concurrency, order, a lost call sent again)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from application.catalog.base import Product
from application.session import BuildSession
from modal_workers.types import EmbedOutput


class RecordingBackend:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def embed(self, refs: list[Any], kinds: list[str], limits: Any) -> EmbedOutput:
        self.sent += [ref.id for ref in refs]
        vectors = {kind: np.ones((len(refs), 4), np.float32) / 2 for kind in kinds}
        return EmbedOutput(ids=[ref.id for ref in refs], vectors=vectors, failures=[])


def test_rows_the_catalog_refused_are_failures_and_never_fetched() -> None:
    backend = RecordingBackend()
    session = SimpleNamespace(backend=backend, kinds=["color"], limits=None)
    products = [
        Product(1, "https://img.example/1.jpg"),
        Product(2, "gone/9.jpg", refused=("not_signed", "'gone/9.jpg' not signed")),
    ]
    output = BuildSession.embed(session, products)  # type: ignore[arg-type]
    assert backend.sent == [1]
    assert output.ids == [1]
    assert [(f.id, f.reason) for f in output.failures] == [(2, "not_signed")]


class StandInRemote:
    """A backend whose calls take their own time (so they end out of order), record how many run
    at once, and raise for the calls `fail` names (once each, or always)."""

    def __init__(self, seconds: dict[int, float], fail_once: frozenset[int] = frozenset()) -> None:
        self.seconds = seconds
        self.fail_once = set(fail_once)
        self.lock = threading.Lock()
        self.running = 0
        self.most_running = 0
        self.finished: list[int] = []  # first id of each call, in the order calls ended
        self.answered: list[int] = []  # every product id a call answered

    def embed(self, refs: list[Any], kinds: list[str], limits: Any) -> EmbedOutput:
        first = refs[0].id
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(self.seconds.get(first, 0.01))
            with self.lock:
                if first in self.fail_once:
                    self.fail_once.discard(first)
                    raise TimeoutError(f"call at {first} lost")
        finally:
            with self.lock:
                self.running -= 1
        with self.lock:
            self.finished.append(first)
            self.answered += [ref.id for ref in refs]
        ids = [ref.id for ref in refs]
        vectors = {kind: np.full((len(refs), 2), float(ids[0]), np.float32) for kind in kinds}
        return EmbedOutput(ids=ids, vectors=vectors, failures=[])


def _session(backend: StandInRemote, max_in_flight: int, batch: int, commit: int) -> BuildSession:
    return BuildSession(
        run_id="test", kinds=["color", "combined"], storage=None, catalog=None,  # type: ignore[arg-type]
        backend=backend, limits=None, writer=None, lease=None, keeper=None,  # type: ignore[arg-type]
        max_images=None, totals_at_start={}, max_in_flight=max_in_flight, batch_size=batch,
        commit_size=commit,
    )  # fmt: skip


def _products(first: int, last: int) -> list[Product]:
    return [Product(i, f"https://img.example/{i}.jpg") for i in range(first, last + 1)]


def test_calls_of_two_chunks_share_one_window_and_come_back_in_catalog_order() -> None:
    # Later calls are quicker: they end before the earlier ones, across the chunk boundary too.
    seconds = {first: 0.02 * (12 - n) for n, first in enumerate(range(1, 49, 4))}
    backend = StandInRemote(seconds)
    session = _session(backend, max_in_flight=5, batch=4, commit=24)
    try:
        chunks = [session.dispatch(_products(1, 24)), session.dispatch(_products(25, 48))]
        outputs = [session.collect(chunk) for chunk in chunks]
    finally:
        session.close_pool()
    assert backend.most_running == 5  # the window is full, and never more than max_in_flight
    assert backend.finished != sorted(backend.finished)
    assert [out.ids for out in outputs] == [list(range(1, 25)), list(range(25, 49))]
    firsts = [row[0] for row in outputs[1].vectors["combined"]]
    assert firsts == [float(25 + 4 * (n // 4)) for n in range(24)]  # each row with its own id
    assert sorted(backend.answered) == list(range(1, 49))  # every product answered once


def test_a_call_that_raised_is_sent_again_alone_when_collected_again() -> None:
    backend = StandInRemote({}, fail_once=frozenset({9}))
    session = _session(backend, max_in_flight=3, batch=4, commit=16)
    try:
        chunk = session.dispatch(_products(1, 16))
        with pytest.raises(TimeoutError, match="call at 9"):
            session.collect(chunk)
        output = session.collect(chunk)  # what Prefect's retry of collect-chunk does
    finally:
        session.close_pool()
    assert output.ids == list(range(1, 17))
    assert sorted(backend.answered) == list(range(1, 17))  # 9-12 once: only the lost call again


def test_chunks_held_cover_the_window_and_at_least_three() -> None:
    backend = StandInRemote({})
    assert _session(backend, max_in_flight=20, batch=256, commit=5120).chunks_held == 3
    # Small commits: enough chunks queued to keep 20 calls running while one is written.
    assert _session(backend, max_in_flight=20, batch=256, commit=512).chunks_held == 11
    assert _session(backend, max_in_flight=2, batch=256, commit=65536).chunks_held == 3
