"""A store's latest commit kept loaded: poll progress.json, load a new commit aside, swap it in.

Requests read `LiveIndex.current` once and use that LoadedCommit to the end, so a swap never
fails a request: the old commit answers until the new one is loaded, then one reference
assignment (atomic under the GIL) makes every later request see the new one.

Memory: at most two commits are loaded at once, the one served and the one loading. A load
starts only after the commit retired by the previous swap has been freed (requests still using
it finish first), so a third copy never builds up when commits come faster than loads.

Churn (a build commits every batch): loads are coalesced. One load runs at a time and loads
the store's newest commit when it starts, so the commits made meanwhile are skipped, not
queued; and the next load starts no sooner than `min_interval_s` after the previous one ended, so
a build committing every second costs one load per interval, not one per commit.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from application.searcher import LoadedCommit

log = logging.getLogger("faiss_builder.service")

#: How long a load waits for requests still holding the retired commit before loading anyway.
RETIRE_WAIT_S = 60.0


class LiveIndex:
    """The current commit of a store, reloaded in a background thread when a build commits."""

    def __init__(
        self,
        load: Callable[[], LoadedCommit],
        read_commit_seq: Callable[[], int | None],
        *,
        poll_s: float = 2.0,
        min_interval_s: float = 0.0,
        on_load: Callable[[LoadedCommit, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._read_commit_seq = read_commit_seq
        self.poll_s = poll_s
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._loaded_at: float | None = None
        self._on_load = on_load
        self._current: LoadedCommit | None = None
        self._retired: weakref.ref[LoadedCommit] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.loads = 0
        #: Commits newer than the served one that were never loaded (a later one was).
        self.skipped = 0

    @property
    def current(self) -> LoadedCommit | None:
        return self._current

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="faiss-builder-reload", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def refresh(self) -> bool:
        """Load the store's newest commit when it differs from the one served and the previous
        load ended at least `min_interval_s` ago; True when it swapped."""
        seq = self._read_commit_seq()
        current = self._current
        if seq is None or (current is not None and current.commit_seq == seq):
            return False
        if self._loaded_at is not None and self._clock() - self._loaded_at < self.min_interval_s:
            return False  # coalesced: the next poll past the interval loads the newest one
        self._wait_for_retired()
        started = time.monotonic()
        try:
            loaded = self._load()
        finally:  # a failed load waits the interval too: a broken commit is not retried hot
            self._loaded_at = self._clock()
        if current is not None and loaded.commit_seq == current.commit_seq:
            return False
        self._current = loaded  # the swap: one reference assignment
        self.loads += 1
        if current is not None and loaded.commit_seq > current.commit_seq + 1:
            self.skipped += loaded.commit_seq - current.commit_seq - 1
        self._retired = weakref.ref(current) if current is not None else None
        del current
        if self._on_load is not None:
            self._on_load(loaded, time.monotonic() - started)
        return True

    def _wait_for_retired(self) -> None:
        deadline = time.monotonic() + RETIRE_WAIT_S
        while self._retired is not None and self._retired() is not None:
            if time.monotonic() > deadline:
                log.warning("a retired commit is still in use; loading the next one anyway")
                break
            gc.collect()
            time.sleep(0.05)
        self._retired = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
                self.last_error = None
            except Exception as exc:  # keep serving the commit we have; try again next poll
                self.last_error = _one_line(exc)
                log.warning(
                    "reload failed (still serving the previous commit): %s", self.last_error
                )
            self._stop.wait(self.poll_s)


def _one_line(exc: Any) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
