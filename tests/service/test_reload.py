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

    with serve(store, demo_catalog, poll_s=0.05, min_reload_interval_s=0) as running:
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


def test_a_build_committing_every_batch_is_coalesced_not_reloaded_per_commit(
    prefect_api: object, demo_catalog: Path, tmp_path: Path
) -> None:
    """A build of batch size 1 commits once per image while clients query: no request fails,
    every answer names a commit the build made, and the service loads fewer commits than were
    made (the newest one at each load, at most one load per min_reload_interval_s)."""
    store = tmp_path / "store"
    build(store, demo_catalog, "--embedder", "histogram", "--batch-size", "3",
          "--max-images", "3")  # fmt: skip
    first = read_progress(LocalStore(store))
    assert first is not None
    answers: list[tuple[int, int]] = []  # (commit, live color vectors)
    failures: list[str] = []
    stop = threading.Event()

    with serve(store, demo_catalog, poll_s=0.02, min_reload_interval_s=4.0) as running:
        wait_for_commit(running.client)

        def client() -> None:
            with httpx.Client(base_url=running.url, timeout=30) as http:
                while not stop.is_set():
                    try:
                        response = http.post("/search", json={"id": 1, "k": PRODUCTS})
                        body = response.json()
                        if response.status_code != 200:
                            failures.append(f"{response.status_code} {body}")
                        else:
                            answers.append((body["commit"], len(body["results"])))
                    except Exception as exc:  # a refused connection counts as a failure too
                        failures.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            started = time.monotonic()
            build(store, demo_catalog, "--embedder", "histogram", "--batch-size", "1")
            took = time.monotonic() - started
            final = read_progress(LocalStore(store))
            assert final is not None
            deadline = time.monotonic() + 30
            while running.client.get("/health").json()["commit"] != final.commit_seq:
                assert time.monotonic() < deadline, "the last commit was never served"
                time.sleep(0.05)
            reloads = running.client.get("/health").json()["reloads"]
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)

    commits = final.commit_seq - first.commit_seq
    assert commits >= 8, (commits, took)  # 21 products left in batches of one
    assert failures == [] and answers
    assert {commit for commit, _ in answers} <= set(range(first.commit_seq, final.commit_seq + 1))
    sizes: dict[int, set[int]] = {}
    for commit, count in answers:
        sizes.setdefault(commit, set()).add(count)
    assert all(len(counts) == 1 for counts in sizes.values()), sizes  # no commit mixed
    assert 1 <= reloads["loads"] < commits and reloads["skipped"] >= 1, (reloads, took)
    # after the first load, every commit was either loaded or skipped for a newer one
    assert reloads["loads"] - 1 + reloads["skipped"] == commits, (reloads, commits, took)


def test_loads_are_coalesced_by_the_interval_and_at_most_two_are_alive() -> None:
    """Commits every poll, one load per 5 s of clock: each load takes the newest commit, the
    ones in between are skipped, and never more than two commits are alive."""
    import weakref

    alive: weakref.WeakSet[_Commit] = weakref.WeakSet()
    peak = 0
    now = [0.0]
    store_seq = [1]

    def load() -> _Commit:
        nonlocal peak
        commit = _Commit(store_seq[0])
        alive.add(commit)
        peak = max(peak, len(alive))
        return commit

    live = LiveIndex(
        load,  # type: ignore[arg-type]
        lambda: store_seq[0],
        poll_s=60,
        min_interval_s=5.0,
        clock=lambda: now[0],
    )
    served = []
    for _ in range(40):  # 40 polls 1 s apart, a commit before each
        store_seq[0] += 1
        now[0] += 1.0
        if live.refresh():
            served.append(live.current.commit_seq)  # type: ignore[union-attr]
    assert live.loads == len(served) == 8  # the first poll loads; then one per 5 s
    assert served == [2, 7, 12, 17, 22, 27, 32, 37]  # the store's newest at each load
    assert live.skipped == 7 * 4 and peak <= 2  # 4 commits skipped between loads
