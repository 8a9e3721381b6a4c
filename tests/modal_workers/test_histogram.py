"""Weight-free embedder: fixed dims, deterministic, colour vs structure behave as documented."""

from __future__ import annotations

import numpy as np
from PIL import Image

from modal_workers.embedders import ImageEmbedder
from modal_workers.types import KINDS
from tests.support.photos import load_photo


def test_dims_and_normalisation(histogram_embedder: ImageEmbedder) -> None:
    assert histogram_embedder.name == "histogram" and histogram_embedder.model_id == "histogram-v1"
    vectors = histogram_embedder.embed([load_photo("coffee"), load_photo("rocket")], KINDS)
    for kind in KINDS:
        assert vectors[kind].shape == (2, histogram_embedder.dims[kind])
        assert vectors[kind].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors[kind], axis=1), 1.0, atol=1e-5)
    assert histogram_embedder.dims == {"color": 500, "structure": 144, "combined": 644}


def test_deterministic(histogram_embedder: ImageEmbedder) -> None:
    photo = load_photo("chelsea")
    first = histogram_embedder.embed([photo], KINDS)
    second = histogram_embedder.embed([photo.copy()], KINDS)
    assert all(np.array_equal(first[k], second[k]) for k in KINDS)


def test_colour_changes_move_color_more_than_structure(histogram_embedder: ImageEmbedder) -> None:
    photo = load_photo("coffee")
    recoloured = Image.fromarray(np.asarray(photo)[..., ::-1].copy())
    v = histogram_embedder.embed([photo, recoloured], ["color", "structure"])
    color_cos = float(v["color"][0] @ v["color"][1])
    structure_cos = float(v["structure"][0] @ v["structure"][1])
    assert structure_cos > 0.95
    assert color_cos < structure_cos - 0.2


def test_different_images_differ(histogram_embedder: ImageEmbedder) -> None:
    v = histogram_embedder.embed(
        [Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")], ["color"]
    )
    assert float(v["color"][0] @ v["color"][1]) < 0.1
