"""A stand-in for the deployed Modal `Embedder` instance: the same call shape, in-process.

`FakeDeployment().embed.remote(refs, kinds, limits)` and `.describe.remote()` answer what the
deployed class answers (the wire dicts), so the real `ModalEmbedClient(remote=...)` wraps it
and the real build-index flow drives it. A fleet is simulated: at most `containers x
inputs_per_container` calls run at once (Modal queues the others), each sleeping for its batch
time (time.sleep releases the GIL, as a GPU forward does). It records the calls: the most that
ran at once, the order they finished in, and which ones were made to fail.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DIM = 8


def id_vectors(ids: Sequence[Any], kinds: Sequence[str], dim: int = DIM) -> dict[str, np.ndarray]:
    """Deterministic unit vectors per kind: row i depends on ids[i] and the kind only."""
    out = {}
    for kind in kinds:
        width = 2 * dim if kind == "combined" else dim
        rows = [
            np.random.default_rng(zlib.crc32(f"{kind}:{i}".encode())).standard_normal(width)
            for i in ids
        ]
        x = np.asarray(rows, np.float32).reshape(len(ids), width)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        out[kind] = x
    return out


class _Method:
    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    def remote(self, *args: Any) -> Any:
        return self.function(*args)


class FakeDeployment:
    """The deployed class instance: `.embed.remote(...)`, `.describe.remote()`.

    `batch_seconds(call_number, refs)` is the time one call takes; `fail(call_number, refs)`
    returns an exception to raise for that call (after Modal's retries, as .remote() raises it)
    or None.
    """

    def __init__(
        self,
        containers: int = 2,
        inputs_per_container: int = 1,
        batch_seconds: Callable[[int, Sequence[Any]], float] = lambda n, refs: 0.0,
        fail: Callable[[int, Sequence[Any]], BaseException | None] = lambda n, refs: None,
        vectors: Callable[[Sequence[Any], Sequence[str]], dict[str, np.ndarray]] = id_vectors,
        dim: int = DIM,
    ) -> None:
        self.containers = containers
        self.inputs_per_container = inputs_per_container
        self.batch_seconds = batch_seconds
        self.fail = fail
        self.vectors = vectors
        self.dim = dim
        self.slots = threading.BoundedSemaphore(containers * inputs_per_container)
        self.lock = threading.Lock()
        self.calls = 0
        self.running = 0
        self.most_running = 0
        self.finished: list[Any] = []  # first product id of each call, in the order calls ended
        self.failed_calls: list[int] = []
        self.busy_s = 0.0
        self.embed = _Method(self._embed)
        self.describe = _Method(self._describe)

    def _describe(self) -> dict[str, Any]:
        dims = {"color": self.dim, "structure": self.dim, "combined": 2 * self.dim}
        deployment = {
            "gpu": "simulated",
            "max_containers": self.containers,
            "inputs_per_container": self.inputs_per_container,
        }
        return {
            "embedder": "clip",
            "model": "fake-deployment",
            "dims": dims,
            "model_digest": "fake-deployment-v1",
            "deployment": deployment,
        }

    def _embed(
        self, refs: list[tuple[Any, str]], kinds: list[str], limits: dict[str, Any]
    ) -> dict[str, Any]:
        with self.lock:
            number = self.calls
            self.calls += 1
        with self.slots:  # beyond the fleet's capacity, Modal queues the input
            with self.lock:
                self.running += 1
                self.most_running = max(self.most_running, self.running)
            try:
                seconds = self.batch_seconds(number, refs)
                time.sleep(seconds)
                error = self.fail(number, refs)
                if error is not None:
                    with self.lock:
                        self.failed_calls.append(number)
                    raise error
                ids = [product_id for product_id, _ in refs]
                vectors = self.vectors(ids, kinds)
            finally:
                with self.lock:
                    self.running -= 1
                    self.busy_s += seconds
        with self.lock:
            self.finished.append(refs[0][0] if refs else None)
        return {"ids": ids, "vectors": vectors, "failures": []}
