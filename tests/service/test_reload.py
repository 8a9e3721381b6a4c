"""Hot reload under load: builds commit while clients query; no request fails, no commit is mixed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from application.live import LiveIndex
from sharding.local_store import LocalStore
from sharding.state import read_progress
from tests.service.conftest import PRODUCTS, build, serve, wait_for_commit

STEP = 6


def test_builds_commit_under_load_and_no_request_fails(
    prefect_api: object, demo_catalog: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    build(store, demo_catalog, "--embedder", "histogram", "--batch-size", "3",
          "--max-images", str(STEP))  # fmt: skip
    first = read_progress(LocalStore(store))
    assert first is not None
    answers: list[tuple[str, int, int]] = []  # (route, commit, vectors or results)
    failures: list[str] = []
    stop = threading.Event()

    with serve(store, demo_catalog, poll_s=0.05) as running:
        wait_for_commit(running.client)

        def clients(route: str) -> None:
            with httpx.Client(base_url=running.url, timeout=30) as client:
                while not stop.is_set():
                    try:
                        if route == "health":
                            response = client.get("/health")
                            body = response.json()
                            count = body.get("vectors", {}).get("color", -1)
                        else:
                            response = client.post("/search", json={"id": 1, "k": PRODUCTS})
                            body = response.json()
                            count = len(body.get("results", []))
                        if response.status_code != 200:
                            failures.append(f"{route} {response.status_code} {body}")
                        else:
                            answers.append((route, body["commit"], count))
                    except Exception as exc:  # a refused connection counts as a failure too
                        failures.append(f"{route} {type(exc).__name__}: {exc}")

        threads = [
            threading.Thread(target=clients, args=(route,), daemon=True)
            for route in ("health", "search", "search")
        ]
        for thread in threads:
            thread.start()
        try:
            for _ in range(3):
                time.sleep(0.3)
                build(store, demo_catalog, "--embedder", "histogram", "--batch-size", "3",
                      "--max-images", str(STEP))  # fmt: skip
            final = read_progress(LocalStore(store))
            assert final is not None
            deadline = time.monotonic() + 30
            while running.client.get("/health").json()["commit"] != final.commit_seq:
                assert time.monotonic() < deadline, "the last commit was never served"
                time.sleep(0.05)
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)

    assert failures == []
    served = {commit for _, commit, _ in answers}
    assert served <= set(range(first.commit_seq, final.commit_seq + 1))
    assert len(served) >= 3 and final.commit_seq in served
    # One commit, one size: a commit never answers with another commit's vectors.
    for route in ("health", "search"):
        sizes: dict[int, set[int]] = {}
        for r, commit, count in answers:
            if r == route:
                sizes.setdefault(commit, set()).add(count)
        assert all(len(counts) == 1 for counts in sizes.values()), sizes
        ordered = [next(iter(sizes[c])) for c in sorted(sizes)]
        assert ordered == sorted(ordered)
    assert max(count for r, _, count in answers if r == "health") == 4 * STEP


class _Commit:
    def __init__(self, seq: int) -> None:
        self.commit_seq = seq


def test_a_failed_load_keeps_the_old_commit_serving() -> None:
    seqs = iter([1, 2, 3])
    loads = iter([_Commit(1), RuntimeError("shard 7 unreadable"), _Commit(3)])

    def load() -> object:
        item = next(loads)
        if isinstance(item, Exception):
            raise item
        return item

    live = LiveIndex(load, lambda: next(seqs), poll_s=60)  # type: ignore[arg-type]
    assert live.refresh() and live.current.commit_seq == 1  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="shard 7"):
        live.refresh()
    assert live.current.commit_seq == 1  # type: ignore[union-attr]
    assert live.refresh() and live.current.commit_seq == 3  # type: ignore[union-attr]


def test_at_most_two_commits_are_alive_at_once() -> None:
    """A load waits until the commit retired by the previous swap is gone."""
    import weakref

    alive: weakref.WeakSet[_Commit] = weakref.WeakSet()
    peak = 0
    seq = [0]

    def load() -> _Commit:
        nonlocal peak
        commit = _Commit(seq[0])
        alive.add(commit)
        peak = max(peak, len(alive))
        return commit

    live = LiveIndex(load, lambda: seq[0], poll_s=60)  # type: ignore[arg-type]
    for number in range(1, 6):
        seq[0] = number
        assert live.refresh()
    assert peak <= 2 and live.loads == 5
