"""The embedder interface and its shared batch logic (no factory here: see modal_workers.embedders).

Concrete embedders (clip.py, histogram.py) import this module; the factory imports them lazily.
Nothing here imports a concrete embedder, so the import graph has no loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from modal_workers.types import check_kinds, views_for
from modal_workers.views import assemble_kinds, make_views, square_crop

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
# Images per embed_views call when an embedder does not say (the pipeline's forward batch).
DEFAULT_FORWARD_BATCH = 32


class EmbedderLoadError(RuntimeError):
    """The embedder cannot be built (weights missing offline, bad path, unknown name)."""


class NoTextTower(ValueError):
    """Text was asked of an embedder that has no text encoder (the histogram one), or of a
    model saved without the tokenizer its text tower needs."""


def embed_text(embedder: object, texts: Sequence[str]) -> np.ndarray:
    """(len(texts), dim) L2-normalised text vectors in the embedder's image space (the colour
    view's); NoTextTower when the embedder cannot embed text."""
    method = getattr(embedder, "embed_text", None)
    if method is None:
        name = getattr(embedder, "name", type(embedder).__name__)
        raise NoTextTower(
            f"the {name} embedder has no text tower: text queries need a store built with a "
            "CLIP model (--embedder clip)"
        )
    vectors: np.ndarray = method(list(texts))
    return vectors


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
    model_digest: str  # identity of the loaded weights (not of the path that named them)
    forward_batch: int  # images per embed_views call that suit this embedder and its device

    def prepare(self, image: Image.Image, views: Sequence[str]) -> dict[str, np.ndarray]: ...

    def embed_views(self, batches: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def embed(
        self, images: Sequence[Image.Image], kinds: Sequence[str]
    ) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...


class SquareCropEmbedder:
    """Shared part: CLIP-style resize + centre crop, the views, kind assembly, describe()."""

    name: str
    model_id: str
    model_digest: str
    dims: dict[str, int]
    decode_edge: int
    crop: tuple[int, int]
    resample: int = Image.Resampling.BICUBIC
    forward_batch: int = DEFAULT_FORWARD_BATCH

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

    def describe(self) -> dict[str, Any]:
        """What a store records about the embedder: `model_digest` identifies the weights."""
        return describe_embedder(self)


def describe_embedder(embedder: ImageEmbedder) -> dict[str, Any]:
    """{"embedder", "model", "dims", "model_digest"}: plain data (crosses the Modal boundary)."""
    return {
        "embedder": embedder.name,
        "model": embedder.model_id,
        "dims": dict(embedder.dims),
        "model_digest": embedder.model_digest,
    }
