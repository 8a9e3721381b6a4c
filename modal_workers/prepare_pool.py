"""Preparation in several processes: fetch, decode and views beside the process that embeds.

One process cannot prepare faster than ~150-200 images/s whatever its cores: ~45% of the
preparation (the httpx fetch path, the structure view's small numpy ops, batch stacking) holds
the GIL. A PreparePool starts `processes` worker processes once (per Modal container, or per
caller that keeps it), each with its own fetch client, thread pool and pixel budgets, and feeds
the embedding process uint8 view rows through shared memory:

    pool = PreparePool.for_embedder(embedder, processes=preparation_processes())
    embed_refs(refs, kinds, embedder, limits, pool=pool)   # same output as without the pool
    pool.close()

Work travels as chunks of CHUNK refs. Each chunk owns one slot of a shared-memory ring (slots x
views x CHUNK x H x W x 3 bytes, allocated once): the worker writes each prepared image's views
into the slot, packs the successes to the front and answers with one outcome per ref (None = in
the slot, or the failure's reason and message). The embedding process copies the rows into its
forward batch (a plain copy that releases the GIL) and frees the slot. Memory is bounded by the
ring, and a call holds at most slots // callers chunks, so the next chunks download and decode
while its forward runs. Chunks are consumed in input order, so ids and failures keep the order
of the in-process path and the vectors are the same: the processes run the embedder's
preparation as a CropPreparer (crop size, resampling, SigLIP's resize), trusted only once it
gives the embedder's own bytes on a probe image; any other embedder prepares in-process.

A worker that dies (OOM kill, a decoder crash) does not hang its callers: the pool watches each
process's sentinel, every product of the chunks it held comes back as a `worker_lost` failure
whose message says which process died and how, and a new process takes its place. A pool whose
processes cannot start at all raises PreparePoolBroken. Processes start with 'forkserver' (or
'spawn'), so they inherit neither torch/CUDA state nor the caller's threads; they import only
this module's light dependencies (numpy, Pillow, httpx).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import connection, shared_memory
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modal_workers.budget import PixelBudget
from modal_workers.decode import without_bytes
from modal_workers.embedder import SquareCropEmbedder
from modal_workers.fetch import open_client
from modal_workers.pipeline import load_prepared
from modal_workers.types import VIEWS, FailedProduct, FetchLimits, ImageRef
from modal_workers.views import make_views, square_crop

CHUNK = 16  # refs per task: large enough to amortise a message, small enough to keep order cheap
SLOTS_PER_PROCESS = 4  # chunks each process may hold (queued, preparing or awaiting the copy)
START_TIMEOUT_S = 120.0  # a worker that has not said "ready" by then means the pool cannot start
LOST_REASON = "worker_lost"

Outcome = tuple[str, str] | None  # None: the image's views are in the slot; else (reason, message)


class PreparePoolBroken(RuntimeError):
    """The preparation processes cannot start (or the pool was closed): no image can be prepared."""


@dataclass(frozen=True)
class CropPreparer:
    """An embedder's per-image preparation as plain data, so that a worker process can run it.

    resize_to None: SquareCropEmbedder.prepare (shortest edge to decode_edge, centre crop);
    (height, width): the whole image resized to that size, as ClipEmbedder prepares SigLIP.
    """

    decode_edge: int
    crop: tuple[int, int]
    resample: int
    resize_to: tuple[int, int] | None = None

    def prepare(self, image: Image.Image, views: Sequence[str]) -> dict[str, np.ndarray]:
        if self.resize_to is None:
            rgb = square_crop(image, self.decode_edge, self.crop, self.resample)
        else:
            height, width = self.resize_to
            resized = image.convert("RGB").resize((width, height), resample=self.resample)
            rgb = np.ascontiguousarray(np.asarray(resized))
        return make_views(rgb, views)


def probe_image() -> Image.Image:
    """A fixed, non-square picture with edges and colour, to compare two preparations on."""
    rows, cols = np.mgrid[0:237, 0:311]
    rgb = np.stack([(rows * 3) % 256, (cols * 5) % 256, ((rows + cols) * 7) % 256], axis=-1)
    rgb[60:120, 80:200] = (250, 30, 30)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


_VERIFIED: weakref.WeakKeyDictionary[Any, CropPreparer | None] = weakref.WeakKeyDictionary()


def preparer_of(embedder: object) -> CropPreparer | None:
    """The embedder's preparation as a CropPreparer, or None where it prepares another way.

    A CropPreparer is only trusted once it gives the very bytes the embedder's own `prepare`
    gives on a probe image (both views): an embedder whose prepare changes falls back to
    in-process preparation instead of receiving other crops.
    """
    if not isinstance(embedder, SquareCropEmbedder):
        return None
    try:
        return _VERIFIED[embedder]
    except (KeyError, TypeError):
        pass
    resize_to = getattr(embedder, "resize_to", None)
    candidate = CropPreparer(
        int(embedder.decode_edge),
        (int(embedder.crop[0]), int(embedder.crop[1])),
        int(embedder.resample),
        None if resize_to is None else (int(resize_to[0]), int(resize_to[1])),
    )
    image = probe_image()
    try:
        theirs = embedder.prepare(image, VIEWS)
        ours = candidate.prepare(image, VIEWS)
        same = all(np.array_equal(theirs[view], ours[view]) for view in VIEWS)
    except Exception:  # an embedder that cannot prepare the probe prepares in-process
        same = False
    verified = candidate if same else None
    with contextlib.suppress(TypeError):
        _VERIFIED[embedder] = verified
    return verified


# ---------------------------------------------------------------------------------------------
# How many processes


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """Cores the cgroup's CPU quota allows (cgroup v2 cpu.max, or v1 cfs quota); None = no cap."""
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
        if quota != "max":
            return int(quota) / int(period or 100_000)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cores(reserved: float | None = None) -> float:
    """The cores this process may run on: its CPU affinity, the cgroup quota, the reservation."""
    cores = float(len(os.sched_getaffinity(0)))
    for cap in (cgroup_cpu_quota(), reserved):
        if cap is not None and cap > 0:
            cores = min(cores, cap)
    return cores


def preparation_processes(reserved: float | None = None, asked: int | None = None) -> int:
    """Worker processes for preparation: one per usable core; 0 (in-process) below two cores.

    `asked` (>= 0) overrides the derivation: 0 keeps preparation in the calling process.
    """
    if asked is not None and asked >= 0:
        return asked
    cores = math.floor(usable_cores(reserved) + 1e-9)
    return cores if cores >= 2 else 0


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "no exit code"
    if exitcode < 0:
        import signal

        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (killed: out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"{name}{hint}"
    return f"exit code {exitcode}"


# ---------------------------------------------------------------------------------------------
# The worker process


@dataclass(frozen=True)
class WorkerSetup:
    shm_name: str
    shape: tuple[int, ...]
    preparer: CropPreparer
    threads: int
    pixel_share: float  # a call's max_pixels_in_flight x this = one process's pixel budget
    affinity: tuple[int, ...]


def worker_main(conn: Connection, setup: WorkerSetup) -> None:
    """A preparation process: takes (task, slot, refs, views, limits), answers (task, outcomes)."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, setup.affinity)  # a forkserver child has the server's affinity
    # Attaching registers the block with the resource tracker this process shares with the pool
    # (a set: no second entry); the pool unlinks it, or the tracker does if the pool crashed.
    shm = shared_memory.SharedMemory(name=setup.shm_name)
    ring: np.ndarray = np.ndarray(setup.shape, np.uint8, buffer=shm.buf)
    client = open_client(FetchLimits(threads=setup.threads))  # one client for the process's life
    budgets: dict[int, PixelBudget] = {}
    state = threading.Lock()
    send_lock = threading.Lock()
    executor = ThreadPoolExecutor(setup.threads)

    def budget_for(limits: FetchLimits) -> PixelBudget:
        with state:
            budget = budgets.get(limits.max_pixels_in_flight)
            if budget is None:
                capacity = max(1, math.ceil(limits.max_pixels_in_flight * setup.pixel_share))
                budget = budgets[limits.max_pixels_in_flight] = PixelBudget(capacity)
            return budget

    def run_chunk(task: int, slot: int, refs: list, views: tuple, limits: FetchLimits) -> None:
        outcomes: list[Outcome] = [None] * len(refs)
        left = [len(refs)]
        budget = budget_for(limits)

        def one(position: int) -> None:
            product_id, url = refs[position]
            try:
                ref = ImageRef(product_id, url)
                result = load_prepared(ref, views, setup.preparer, limits, client, budget)
                if isinstance(result, FailedProduct):
                    outcomes[position] = (result.reason, result.message)
                else:
                    for view in views:
                        ring[slot, VIEWS.index(view), position] = result[view]
            except Exception as exc:  # a broken slot write must not lose the chunk's answer
                message = f"{type(exc).__name__}: {without_bytes(str(exc))}"
                outcomes[position] = ("unexpected_error", message)
            with state:
                left[0] -= 1
                last = left[0] == 0
            if last:
                finish(task, slot, views, outcomes)

        for position in range(len(refs)):
            executor.submit(one, position)

    def finish(task: int, slot: int, views: tuple, outcomes: list[Outcome]) -> None:
        row = 0
        for position, outcome in enumerate(outcomes):
            if outcome is None:
                if row != position:  # pack the successes to the front of the slot
                    for view in views:
                        index = VIEWS.index(view)
                        ring[slot, index, row] = ring[slot, index, position]
                row += 1
        with send_lock:
            conn.send(("done", task, outcomes))

    with send_lock:
        conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break  # the pool is gone
            if message is None:
                break
            task, slot, refs, views, limits = message
            run_chunk(task, slot, refs, tuple(views), FetchLimits(**limits))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        client.close()
        with contextlib.suppress(BufferError):  # `ring` still views it; the exit unmaps it
            shm.close()


# ---------------------------------------------------------------------------------------------
# The pool, in the embedding process


@dataclass
class Task:
    number: int
    refs: list[ImageRef]
    slot: int
    future: Future[list[Outcome] | str] = dataclasses.field(default_factory=Future)


@dataclass
class Worker:
    process: Any  # multiprocessing.Process of the pool's context
    conn: Connection
    ready: bool = False
    pid: int | None = None
    tasks: dict[int, Task] = dataclasses.field(default_factory=dict)


class PreparePool:
    """`processes` preparation processes for one embedder's crop, started once, shared by calls.

    Thread-safe: `callers` calls may prepare through it at once (a Modal container's
    INPUTS_PER_CONTAINER), each holding at most slots // callers chunks.
    """

    def __init__(
        self,
        preparer: CropPreparer,
        processes: int,
        *,
        threads_per_process: int = 8,
        callers: int = 1,
        chunk: int = CHUNK,
        slots: int | None = None,
        start_method: str | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"a preparation pool needs at least one process, not {processes}")
        self.preparer = preparer
        self.processes = processes
        self.threads_per_process = max(1, threads_per_process)
        self.callers = max(1, callers)
        self.chunk = max(1, chunk)
        self.slots = max(slots or processes * SLOTS_PER_PROCESS, self.callers)
        self.window = max(1, self.slots // self.callers)  # chunks one call may hold
        self.restarts = 0
        height, width = preparer.crop
        shape = (self.slots, len(VIEWS), self.chunk, height, width, 3)
        self.shm = shared_memory.SharedMemory(create=True, size=int(np.prod(shape)))
        self.ring: np.ndarray = np.ndarray(shape, np.uint8, buffer=self.shm.buf)
        method = start_method or (
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        self.context: Any = multiprocessing.get_context(method)
        if method == "forkserver":  # the server imports these once; each process forks from it
            self.context.set_forkserver_preload(["modal_workers.prepare_pool"])
        self.setup = WorkerSetup(
            shm_name=self.shm.name,
            shape=shape,
            preparer=preparer,
            threads=self.threads_per_process,
            # The container-wide pixel cap of `callers` in-process calls, split between processes.
            pixel_share=self.callers / processes,
            affinity=tuple(sorted(os.sched_getaffinity(0))),
        )
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(self.slots):
            self._free.put(slot)
        self._lock = threading.Lock()
        self._numbers = iter(range(1 << 62))
        self._broken: str | None = None
        self._closing = False
        self.workers: list[Worker] = []
        with self._lock:
            for _ in range(processes):
                self.workers.append(self._start_worker())
        self._reader = threading.Thread(target=self._read, name="prepare-pool", daemon=True)
        self._reader.start()
        self._finalizer = weakref.finalize(self, PreparePool._shutdown, self.workers, self.shm)
        self.wait_ready()

    @classmethod
    def for_embedder(cls, embedder: object, processes: int, **options: Any) -> PreparePool | None:
        """A pool for this embedder's preparation, or None (0 processes, or its own prepare)."""
        preparer = preparer_of(embedder)
        if processes < 1 or preparer is None:
            return None
        return cls(preparer, processes, **options)

    def serves(self, embedder: object) -> bool:
        """Whether this pool prepares what `embedder.prepare` would (same crop and resampling)."""
        return not self._closing and preparer_of(embedder) == self.preparer

    def pids(self) -> list[int | None]:
        with self._lock:
            return [worker.process.pid for worker in self.workers]

    # -- lifecycle ---------------------------------------------------------------------------

    def _start_worker(self) -> Worker:
        parent, child = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=worker_main, args=(child, self.setup), name="prepare-worker", daemon=True
        )
        process.start()
        child.close()
        return Worker(process=process, conn=parent)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every process has started (or PreparePoolBroken with the reason)."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._broken:
                    raise PreparePoolBroken(self._broken)
                if all(worker.ready for worker in self.workers):
                    return
            if time.monotonic() > end:
                self._break(f"preparation processes did not start within {timeout:g}s")
                raise PreparePoolBroken(str(self._broken))
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the processes (they finish their current images), free the shared memory."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            workers = list(self.workers)
        self._break("the preparation pool is closed")
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        self._reader.join(timeout=30)
        self._finalizer()

    def __enter__(self) -> PreparePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _shutdown(workers: list[Worker], shm: shared_memory.SharedMemory) -> None:
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        for worker in workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=5)
            with contextlib.suppress(OSError):
                worker.conn.close()
        with contextlib.suppress(Exception):
            shm.close()
        with contextlib.suppress(FileNotFoundError):
            shm.unlink()

    def _break(self, reason: str) -> None:
        """No more work: every outstanding chunk is answered with `reason` (raised to its call)."""
        with self._lock:
            if self._broken is None:
                self._broken = reason
            tasks = [task for worker in self.workers for task in worker.tasks.values()]
            for worker in self.workers:
                worker.tasks.clear()
        for task in tasks:
            if not task.future.done():
                task.future.set_exception(PreparePoolBroken(reason))

    # -- the reader thread -------------------------------------------------------------------

    def _read(self) -> None:
        while True:
            with self._lock:
                workers = list(self.workers)
                closing = self._closing
            if closing and not any(worker.process.is_alive() for worker in workers):
                with self._lock:
                    self.workers.clear()
                return
            waitables: list[Any] = []
            for worker in workers:
                waitables += [worker.conn, worker.process.sentinel]
            try:
                ready = connection.wait(waitables, timeout=0.2)
            except OSError:
                ready = []
            for worker in workers:
                if worker.conn in ready:
                    self._receive(worker)
                if worker.process.sentinel in ready:
                    self._lost(worker)

    def _receive(self, worker: Worker) -> None:
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                if message[0] == "ready":
                    with self._lock:
                        worker.ready, worker.pid = True, message[1]
                elif message[0] == "done":
                    _, number, outcomes = message
                    with self._lock:
                        task = worker.tasks.pop(number, None)
                    if task is not None:
                        task.future.set_result(outcomes)
        except (EOFError, OSError):
            pass  # the process is gone: its sentinel says so next

    def _lost(self, worker: Worker) -> None:
        """A process exited: answer its chunks as lost, start another (unless closing)."""
        self._receive(worker)  # answers it sent before it died are still good
        worker.process.join(timeout=1)
        how = describe_exit(worker.process.exitcode)
        with self._lock:
            tasks = list(worker.tasks.values())
            worker.tasks.clear()
            replace = not self._closing and self._broken is None
            if worker in self.workers:
                self.workers.remove(worker)
        with contextlib.suppress(OSError):
            worker.conn.close()
        if not worker.ready and replace:
            self._break(f"a preparation process could not start ({how})")
            replace = False
        message = (
            f"preparation process {worker.pid} died ({how}) while preparing this image's chunk"
        )
        for task in tasks:
            if not task.future.done():
                task.future.set_result(message)
        if replace:
            with self._lock:
                self.restarts += 1
                self.workers.append(self._start_worker())
            # Chunks sent before it says "ready" wait in its pipe.

    # -- submitting and consuming ------------------------------------------------------------

    def _submit(
        self, refs: list[ImageRef], views: tuple[str, ...], limits: dict[str, Any], slot: int
    ) -> Task:
        with self._lock:
            if self._broken:
                self._free.put(slot)
                raise PreparePoolBroken(self._broken)
            task = Task(number=next(self._numbers), refs=refs, slot=slot)
            worker = min(self.workers, key=lambda w: sum(len(t.refs) for t in w.tasks.values()))
            worker.tasks[task.number] = task
            # A process that died meanwhile: its sentinel answers this chunk as lost.
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(
                    (task.number, slot, [(ref.id, ref.url) for ref in refs], views, limits)
                )
        return task

    def _release(self, task: Task) -> None:
        self._free.put(task.slot)

    def _release_when_done(self, task: Task) -> None:
        """The slot is free once its worker no longer writes into it (answered or lost)."""
        task.future.add_done_callback(lambda _: self._release(task))

    def _take_slot(self, block: bool) -> int | None:
        while True:
            if self._broken:
                raise PreparePoolBroken(self._broken)
            try:
                return self._free.get(timeout=0.2) if block else self._free.get_nowait()
            except queue.Empty:
                if not block:
                    return None

    def prepared_batches(
        self,
        refs: Sequence[ImageRef],
        views: Sequence[str],
        limits: FetchLimits,
        batch_size: int,
        failures: list[FailedProduct],
    ) -> Generator[tuple[list[Any], dict[str, np.ndarray]], None, None]:
        """(ids, {view: uint8 (n, H, W, 3)}) forward batches of the successes, in input order.

        Failures are appended to `failures` in input order. While the caller runs the forward on
        a batch, this call's next chunks are already being fetched and decoded.
        """
        views = tuple(views)
        wire_limits = limits.to_dict()
        height, width = self.preparer.crop
        chunks = deque(list(refs[i : i + self.chunk]) for i in range(0, len(refs), self.chunk))
        pending: deque[Task] = deque()

        def top_up() -> None:
            while chunks and len(pending) < self.window:
                # Block only when this call holds nothing: a call that waits for a slot while
                # holding others could wait forever on calls doing the same.
                slot = self._take_slot(block=not pending)
                if slot is None:
                    return
                pending.append(self._submit(chunks.popleft(), views, wire_limits, slot))

        unread = [len(refs)]  # refs not yet copied out: a batch never needs more rows than that

        def new_batch() -> dict[str, np.ndarray]:
            rows = min(batch_size, unread[0])
            return {v: np.empty((rows, height, width, 3), np.uint8) for v in views}

        ids: list[Any] = []
        batch = new_batch()
        try:
            top_up()
            while pending:
                task = pending.popleft()
                try:
                    outcome = task.future.result()
                except BaseException:
                    self._release_when_done(task)
                    raise
                full: list[tuple[list[Any], dict[str, np.ndarray]]] = []
                try:
                    if isinstance(outcome, str):  # its process died
                        failures.extend(
                            FailedProduct(r.id, LOST_REASON, outcome) for r in task.refs
                        )
                        continue
                    ok = [ref for ref, out in zip(task.refs, outcome, strict=True) if out is None]
                    for ref, out in zip(task.refs, outcome, strict=True):
                        if out is not None:
                            failures.append(FailedProduct(ref.id, out[0], out[1]))
                    taken = 0
                    while taken < len(ok):
                        count = min(batch_size - len(ids), len(ok) - taken)
                        start = len(ids)
                        for view in views:
                            rows = self.ring[task.slot, VIEWS.index(view), taken : taken + count]
                            batch[view][start : start + count] = rows
                        ids.extend(ref.id for ref in ok[taken : taken + count])
                        taken += count
                        if len(ids) == batch_size:
                            full.append((ids, batch))
                            ids, batch = [], new_batch()
                finally:
                    unread[0] -= len(task.refs)
                    self._release(task)
                    top_up()  # the next chunks prepare while the caller embeds this batch
                yield from full
            if ids:
                yield ids, {view: array[: len(ids)] for view, array in batch.items()}
        finally:
            for task in pending:  # abandoned (the caller failed): free slots once answered
                self._release_when_done(task)
