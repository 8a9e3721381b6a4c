"""The embedder interface, its shared batch logic, and load_embedder (CLIP imported lazily)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from modal_workers.types import check_kinds, views_for
from modal_workers.views import assemble_kinds, make_views, square_crop

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
EMBEDDER_NAMES = ("clip", "histogram")


class EmbedderLoadError(RuntimeError):
    """The embedder cannot be built (weights missing offline, bad path, unknown name)."""


@runtime_checkable
class ImageEmbedder(Protocol):
    """Decoded images + kinds -> float32 L2-normalised vectors per kind.

    `prepare` (per image, thread-safe, CPU) and `embed_views` (per batch) are the two halves of
    `embed`, split so the pipeline can prepare batch n+1 in threads while batch n runs the model.
    """

    name: str
    model_id: str
    dims: dict[str, int]
    decode_edge: int  # decoders may reduce images down to this shortest edge

    def prepare(self, image: Image.Image, views: Sequence[str]) -> dict[str, np.ndarray]: ...

    def embed_views(self, batches: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def embed(
        self, images: Sequence[Image.Image], kinds: Sequence[str]
    ) -> dict[str, np.ndarray]: ...


class SquareCropEmbedder:
    """Shared part: CLIP-style resize + centre crop, the views, and kind assembly."""

    name: str
    model_id: str
    dims: dict[str, int]
    decode_edge: int
    crop: tuple[int, int]
    resample: int = Image.Resampling.BICUBIC

    def prepare(self, image: Image.Image, views: Sequence[str]) -> dict[str, np.ndarray]:
        rgb = square_crop(image, self.decode_edge, self.crop, self.resample)
        return make_views(rgb, views)

    def embed_views(self, batches: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def embed(self, images: Sequence[Image.Image], kinds: Sequence[str]) -> dict[str, np.ndarray]:
        kinds = check_kinds(kinds)
        views = views_for(kinds)
        prepared = [self.prepare(image, views) for image in images]
        batches = {view: np.stack([p[view] for p in prepared]) for view in views}
        return assemble_kinds(self.embed_views(batches), kinds)


def load_embedder(
    name: str, model: str | None = None, device: str | None = None, precision: str | None = None
) -> ImageEmbedder:
    """Build an embedder by name: "clip" (model id or local folder) or "histogram" (weight-free)."""
    if name == "histogram":
        from modal_workers.histogram import HistogramEmbedder

        return HistogramEmbedder()
    if name == "clip":
        from modal_workers.clip import ClipEmbedder  # torch is imported here, not before

        return ClipEmbedder(model or DEFAULT_CLIP_MODEL, device=device, precision=precision)
    raise EmbedderLoadError(f"unknown embedder {name!r}; choose one of {EMBEDDER_NAMES}")
