"""The pipeline's forward batch comes from the embedder (and its device), not a fixed 32."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from modal_workers.clip import PIPELINE_BATCH, device_kind
from modal_workers.embedders import ImageEmbedder
from modal_workers.histogram import HistogramEmbedder
from modal_workers.pipeline import embed_refs
from modal_workers.types import FetchLimits, ImageRef


class RecordingHistogram(HistogramEmbedder):
    """The real histogram embedder, with a forward batch of its own; keeps its batch sizes."""

    forward_batch = 5

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def embed_views(self, batches: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.sizes.append(len(next(iter(batches.values()))))
        return super().embed_views(batches)


def test_the_embedder_sets_the_pipeline_batch(tmp_path: Path) -> None:
    Image.new("RGB", (64, 48), "green").save(tmp_path / "g.png")
    embedder = RecordingHistogram()
    refs = [ImageRef(i, "g.png") for i in range(12)]
    output = embed_refs(refs, ["color"], embedder, FetchLimits(local_root=str(tmp_path)))
    assert output.ids == list(range(12))
    assert embedder.sizes == [5, 5, 2]
    embedder.sizes.clear()
    embed_refs(refs, ["color"], embedder, FetchLimits(local_root=str(tmp_path)), forward_batch=4)
    assert embedder.sizes == [4, 4, 4]  # an explicit batch still wins


def test_clip_batch_follows_the_device(clip_embedder: ImageEmbedder) -> None:
    assert clip_embedder.forward_batch == PIPELINE_BATCH["cpu"] == 32
    assert PIPELINE_BATCH[device_kind("cuda:0")] > PIPELINE_BATCH[device_kind("cpu")]
