"""Client for the deployed Modal Embedder; imports modal but never torch."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from modal_workers.names import APP_NAME, CLS_NAME
from modal_workers.types import EmbedOutput, FetchLimits, ImageRef

__all__ = ["APP_NAME", "CLS_NAME", "ModalEmbedClient", "ModalNotConfigured"]
SETUP_HINT = (
    "run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET), then deploy the "
    "embedder once with `modal deploy modal_workers/app.py`; or use --backend local"
)


class ModalNotConfigured(RuntimeError):
    """No Modal credentials: raised at once, before any network call."""


def modal_credentials_present() -> bool:
    """Token in MODAL_TOKEN_ID/MODAL_TOKEN_SECRET or the active ~/.modal.toml profile; no I/O."""
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    from modal.config import config

    return bool(config.get("token_id") and config.get("token_secret"))


class ModalEmbedClient:
    """Calls Embedder.embed on the deployed app and turns the answer back into EmbedOutput."""

    def __init__(
        self,
        embedder: str = "clip",
        model: str | None = None,
        app_name: str = APP_NAME,
        cls_name: str = CLS_NAME,
    ) -> None:
        if not modal_credentials_present():
            raise ModalNotConfigured(f"Modal is not configured: {SETUP_HINT}")
        self.embedder = embedder
        self.model = model or ""
        self.app_name = app_name
        self.cls_name = cls_name
        self._instance: Any = None

    def instance(self) -> Any:
        """The remote object, looked up lazily (Cls.from_name does no I/O until first use)."""
        if self._instance is None:
            import modal

            remote_cls = modal.Cls.from_name(self.app_name, self.cls_name)
            self._instance = remote_cls(embedder=self.embedder, model=self.model)
        return self._instance

    def describe(self) -> dict[str, Any]:
        return dict(self.instance().describe.remote())

    def embed(
        self, refs: Sequence[ImageRef], kinds: Sequence[str], limits: FetchLimits
    ) -> EmbedOutput:
        answer = self.instance().embed.remote(*wire_arguments(refs, kinds, limits))
        return EmbedOutput.from_wire(answer)


def wire_arguments(
    refs: Sequence[ImageRef], kinds: Sequence[str], limits: FetchLimits
) -> tuple[list[tuple[Any, str]], list[str], dict[str, Any]]:
    return [(ref.id, ref.url) for ref in refs], list(kinds), limits.to_dict()
