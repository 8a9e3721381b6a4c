"""Views and fusion: structure view behaviour, CLIP-style crop, combined = mean of cosines."""

from __future__ import annotations

import numpy as np
from PIL import Image

from modal_workers.types import views_for
from modal_workers.views import (
    assemble_kinds,
    fuse_combined,
    l2_normalise,
    make_views,
    square_crop,
    structure_view,
)
from tests.support.photos import load_photo


def test_structure_view_draws_edges_dark_on_a_light_ground() -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, 16:] = 200  # one vertical step edge
    view = structure_view(rgb)
    assert view.shape == (32, 32, 3)
    assert np.array_equal(view[..., 0], view[..., 1])
    assert view[:, 15:17, 0].mean() < view[:, 2:6, 0].mean() - 60


def test_flat_image_has_no_edges() -> None:
    view = structure_view(np.full((8, 8, 3), 100, np.uint8))
    assert np.all(view == round(0.4 * 100 + 0.6 * 255))


def test_structure_view_ignores_hue() -> None:
    photo = np.asarray(load_photo("coffee").resize((224, 224)))
    swapped = photo[..., ::-1].copy()  # another colourway of the same object
    same = np.abs(structure_view(photo).astype(int) - structure_view(swapped).astype(int)).mean()
    colour = np.abs(photo.astype(int) - swapped.astype(int)).mean()
    assert same < colour / 3


def test_square_crop_shape_and_centre() -> None:
    image = Image.new("RGB", (600, 300), "white")
    image.paste((255, 0, 0), (0, 0, 100, 300))  # red band left, cropped away
    crop = square_crop(image, 224, (224, 224), Image.Resampling.BICUBIC)
    assert crop.shape == (224, 224, 3)
    assert crop[:, 0].min() > 240


def test_combined_inner_product_is_the_mean_of_cosines() -> None:
    rng = np.random.default_rng(0)
    color, structure = (l2_normalise(rng.normal(size=(5, 8))) for _ in range(2))
    fused = fuse_combined(color, structure)
    assert fused.shape == (5, 16)
    expected = (color @ color[0] + structure @ structure[0]) / 2
    np.testing.assert_allclose(fused @ fused[0], expected, atol=1e-6)


def test_zero_vector_stays_zero_after_normalising() -> None:
    out = l2_normalise(np.zeros((1, 4)))
    assert out.dtype == np.float32 and not np.isnan(out).any() and np.all(out == 0)


def test_views_needed_per_kind() -> None:
    assert views_for(["combined"]) == ("color", "structure")
    assert views_for(["structure"]) == ("structure",)
    rgb = np.zeros((4, 4, 3), np.uint8)
    assert set(make_views(rgb, ("color",))) == {"color"}
    by_view = {"color": np.eye(2, dtype=np.float32), "structure": np.eye(2, dtype=np.float32)}
    assert set(assemble_kinds(by_view, ["color", "combined"])) == {"color", "combined"}
