"""Client for the deployed Modal Embedder; imports modal but never torch."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from modal_workers.names import APP_NAME, CLS_NAME
from modal_workers.types import EmbedOutput, FailedProduct, FetchLimits, ImageRef

__all__ = ["APP_NAME", "CLS_NAME", "ModalEmbedClient", "ModalNotConfigured", "WorkerLostStreak"]
SETUP_HINT = (
    "run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET), then deploy the "
    "embedder once with `modal deploy modal_workers/app.py`; or use --backend local"
)
#: A call that still fails after Modal's own retries is sent again this many times.
REDISPATCHES = 1
#: This many batches lost in a row (no call answering in between) stop the build: a deployment
#: that cannot answer at all must not mark the whole catalog failed.
LOST_STREAK_LIMIT = 3
#: Calls in flight when the deployment does not say what it takes (older deployments).
FALLBACK_CALLS_IN_FLIGHT = 2


class ModalNotConfigured(RuntimeError):
    """No Modal credentials: raised at once, before any network call."""


class WorkerLostStreak(RuntimeError):
    """Several batches in a row failed on Modal after every retry: the deployment is not answering."""


def modal_credentials_present() -> bool:
    """Token in MODAL_TOKEN_ID/MODAL_TOKEN_SECRET or the active ~/.modal.toml profile; no I/O."""
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    from modal.config import config

    return bool(config.get("token_id") and config.get("token_secret"))


def is_configuration_error(exc: BaseException) -> bool:
    """Errors no re-dispatch can cure (no such app, refused token, bad arguments): raised as is."""
    import modal.exception as mx

    return isinstance(exc, (mx.NotFoundError, mx.AuthError, mx.InvalidError, mx.VersionError))


class ModalEmbedClient:
    """Calls Embedder.embed on the deployed app and turns the answer back into EmbedOutput.

    Safe to call from many threads at once (the flow keeps `calls_in_flight()` calls running).
    A call that raises after Modal's retries (container crash, timeout, preemption, lost input)
    is sent again up to `redispatches` times; if it still fails, every product of the batch comes
    back as a `worker_lost` failure (recorded in the store, retried by --retry-failed): never
    silently dropped, and each batch is answered exactly once. `remote` replaces the deployed
    class instance (an object with `.embed.remote(...)` and `.describe.remote()`: tests, the
    fleet simulation).
    """

    #: The workers download the images themselves: a catalog's local file paths cannot reach them.
    fetches_remotely = True

    def __init__(
        self,
        embedder: str = "clip",
        model: str | None = None,
        app_name: str = APP_NAME,
        cls_name: str = CLS_NAME,
        *,
        remote: Any = None,
        redispatches: int = REDISPATCHES,
        lost_streak_limit: int = LOST_STREAK_LIMIT,
    ) -> None:
        if remote is None and not modal_credentials_present():
            raise ModalNotConfigured(f"Modal is not configured: {SETUP_HINT}")
        self.embedder = embedder
        self.model = model or ""
        self.app_name = app_name
        self.cls_name = cls_name
        self.redispatches = redispatches
        self.lost_streak_limit = lost_streak_limit
        self.deployment: dict[str, Any] | None = None
        self.dims: dict[str, int] = {}
        self._instance: Any = remote
        self._lock = threading.Lock()
        self._lost_streak = 0

    def instance(self) -> Any:
        """The remote object, looked up lazily (Cls.from_name does no I/O until first use)."""
        with self._lock:
            if self._instance is None:
                import modal

                remote_cls = modal.Cls.from_name(self.app_name, self.cls_name)
                self._instance = remote_cls(embedder=self.embedder, model=self.model)
            return self._instance

    def describe(self) -> dict[str, Any]:
        """The engine's identity; what the deployment reserves is kept in `self.deployment`."""
        described = dict(self.instance().describe.remote())
        self.deployment = described.pop("deployment", None)
        self.dims = dict(described.get("dims") or {})
        return described

    def calls_in_flight(self) -> int:
        """Calls that keep every container of the deployment busy: max_containers x inputs each."""
        if not self.deployment:
            return FALLBACK_CALLS_IN_FLIGHT
        containers = int(self.deployment.get("max_containers") or 1)
        return max(1, containers * int(self.deployment.get("inputs_per_container") or 1))

    def embed(
        self, refs: Sequence[ImageRef], kinds: Sequence[str], limits: FetchLimits
    ) -> EmbedOutput:
        arguments = wire_arguments(refs, kinds, limits)
        error: Exception | None = None
        for _ in range(self.redispatches + 1):
            try:
                answer = self.instance().embed.remote(*arguments)
            except Exception as exc:
                if is_configuration_error(exc):
                    raise
                error = exc
                continue
            with self._lock:
                self._lost_streak = 0
            return EmbedOutput.from_wire(answer)
        assert error is not None
        with self._lock:
            self._lost_streak += 1
            streak = self._lost_streak
        attempts = self.redispatches + 1
        if streak >= self.lost_streak_limit:
            raise WorkerLostStreak(
                f"{streak} batches in a row failed on Modal after {attempts} dispatches each "
                f"(last: {describe_error(error)}); check the app with `modal app logs "
                f"{self.app_name}`"
            ) from error
        message = f"{describe_error(error)} (after {attempts} dispatches)"
        return lost_batch(refs, kinds, self.dims, message)


def lost_batch(
    refs: Sequence[ImageRef], kinds: Sequence[str], dims: dict[str, int], message: str
) -> EmbedOutput:
    """Every product of a batch whose call was lost, as a `worker_lost` failure (no vectors)."""
    import numpy as np

    return EmbedOutput(
        ids=[],
        vectors={kind: np.zeros((0, dims.get(kind, 0)), np.float32) for kind in kinds},
        failures=[FailedProduct(ref.id, "worker_lost", message) for ref in refs],
    )


def describe_error(exc: BaseException) -> str:
    """The exception's type and the start of its message, on one line."""
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def wire_arguments(
    refs: Sequence[ImageRef], kinds: Sequence[str], limits: FetchLimits
) -> tuple[list[tuple[Any, str]], list[str], dict[str, Any]]:
    return [(ref.id, ref.url) for ref in refs], list(kinds), limits.to_dict()
