"""BuildSession: what it sends to the embedding backend and what it records without sending."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

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
