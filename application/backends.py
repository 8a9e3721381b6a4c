"""Embedding backends: the interface, the in-process one, the table that names them all, and the
pool of calls in flight that a build shares across its chunks."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from application.settings import Settings
    from modal_workers.types import EmbedOutput, FetchLimits, ImageRef


class EmbedBackend(Protocol):
    """Something that embeds batches of image references: in-process or on Modal."""

    def describe(self) -> dict[str, Any]:
        """{"embedder": name, "model": model id, "dims": {kind: dim}, "model_digest": weights}."""
        ...

    def embed(self, refs: list[ImageRef], kinds: list[str], limits: FetchLimits) -> EmbedOutput: ...


class LocalBackend:
    """Runs the same embedding pipeline as the Modal worker, in this process."""

    def __init__(self, embedder_name: str, model: str | None, device: str | None = None) -> None:
        from modal_workers.embedders import load_embedder

        self.embedder = load_embedder(embedder_name, model, device=device)

    def describe(self) -> dict[str, Any]:
        """{"embedder", "model", "dims", "model_digest"}: what the store must agree with."""
        return self.embedder.describe()

    def embed(self, refs: list[ImageRef], kinds: list[str], limits: FetchLimits) -> EmbedOutput:
        from modal_workers.pipeline import embed_refs

        return embed_refs(refs, kinds, self.embedder, limits)


T = TypeVar("T")


class CallPool:
    """At most `calls_in_flight` embedding calls running at once, shared by every chunk of a run.

    A chunk's calls are queued in catalog order behind the previous chunk's, so the fleet stays
    full across chunk boundaries while the flow appends and commits the older chunk; the caller
    bounds memory by how many chunks it keeps queued. Threads around a blocking call (Modal's
    `.remote()`, a local forward) keep each call's own re-dispatch and `worker_lost` accounting
    (modal_workers.remote.ModalEmbedClient).
    """

    def __init__(self, calls_in_flight: int) -> None:
        self.calls_in_flight = calls_in_flight
        self._executor = ThreadPoolExecutor(calls_in_flight, thread_name_prefix="embed-call")

    def submit(self, call: Callable[..., T], *args: Any) -> Future[T]:
        return self._executor.submit(call, *args)

    def close(self) -> None:
        """Calls not started yet are cancelled; the running ones end on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)


#: Builds the embedding backend of a run from its settings, embedder name and model.
BackendFactory = Callable[["Settings", str, "str | None"], "EmbedBackend"]


def _local_backend(settings: Settings, embedder: str, model: str | None) -> EmbedBackend:
    return LocalBackend(embedder, model, device=settings.embed.device)


def _modal_backend(settings: Settings, embedder: str, model: str | None) -> EmbedBackend:
    from modal_workers.remote import ModalEmbedClient

    return ModalEmbedClient(
        embedder=embedder,
        model=model,
        app_name=settings.modal.app_name,
        cls_name=settings.modal.class_name,
    )


#: Backends by the name `FAISS_BUILDER_BACKEND` (or the flow's `backend` parameter) selects.
BACKENDS: dict[str, BackendFactory] = {"local": _local_backend, "modal": _modal_backend}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `backend=name` build its backend with `factory` in this process (benchmarks, tests)."""
    BACKENDS[name] = factory
