"""The embedder factory: a registry of name -> loader; each loader imports its embedder lazily.

The interface lives in modal_workers.embedder; its names are re-exported here so that
`from modal_workers.embedders import load_embedder, EmbedderLoadError, ImageEmbedder` keeps working.
To add an embedder: write a module whose class implements ImageEmbedder (subclass
SquareCropEmbedder for the shared crop/views), then add one loader to LOADERS below.
"""

from __future__ import annotations

from collections.abc import Callable

from modal_workers.embedder import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_FORWARD_BATCH,
    EmbedderLoadError,
    ImageEmbedder,
    SquareCropEmbedder,
    describe_embedder,
)

__all__ = [
    "DEFAULT_CLIP_MODEL",
    "DEFAULT_FORWARD_BATCH",
    "EMBEDDER_NAMES",
    "LOADERS",
    "EmbedderLoadError",
    "ImageEmbedder",
    "SquareCropEmbedder",
    "describe_embedder",
    "load_embedder",
]

Loader = Callable[[str | None, str | None, str | None], ImageEmbedder]


def _load_histogram(model: str | None, device: str | None, precision: str | None) -> ImageEmbedder:
    from modal_workers.histogram import HistogramEmbedder  # weight-free: model/device unused

    return HistogramEmbedder()


def _load_clip(model: str | None, device: str | None, precision: str | None) -> ImageEmbedder:
    from modal_workers.clip import ClipEmbedder  # torch is imported here, not before

    return ClipEmbedder(model or DEFAULT_CLIP_MODEL, device=device, precision=precision)


LOADERS: dict[str, Loader] = {"clip": _load_clip, "histogram": _load_histogram}
EMBEDDER_NAMES = tuple(LOADERS)


def load_embedder(
    name: str, model: str | None = None, device: str | None = None, precision: str | None = None
) -> ImageEmbedder:
    """Build an embedder by name: "clip" (model id or local folder) or "histogram" (weight-free)."""
    loader = LOADERS.get(name)
    if loader is None:
        raise EmbedderLoadError(f"unknown embedder {name!r}; choose one of {EMBEDDER_NAMES}")
    return loader(model, device, precision)
