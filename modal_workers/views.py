"""The views of one decoded image (color, structure), the CLIP-style square crop, and kind fusion.

color      the image as it is (RGB), resized and centre-cropped like CLIPImageProcessor.
structure  a colour-free "pencil sketch" of the same crop, so that products with the same shape
           but a different colour or lighting land close together:
             1. grey = ITU-R 601 luma (what PIL's "L" uses);
             2. a 3x3 binomial blur, so JPEG noise and fine texture do not count as edges;
             3. Sobel gradient magnitude, divided by its 99th percentile and clipped to [0, 1]
                (contrast/exposure invariant; a few very strong edges cannot squash the rest);
             4. structure = 0.4 * grey + 0.6 * 255 * (1 - edges): contours turn into dark
                lines on a light background (a drawing, which CLIP has seen a lot of) while
                some shading survives, so the image stays a natural-looking input for CLIP; grey replicated to 3 channels.
           It is computed on the 224 crop, not the full image: ~0.5 ms instead of ~5 ms, measured on this project's machines.
combined   concat(color, structure) / sqrt(2) of the two L2-normalised vectors: unit norm, and the
           inner product of two combined vectors is exactly the mean of the two cosines, so one
           inner-product index answers "similar in colour and in shape" with equal weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

GREY_WEIGHT = 0.4
EDGE_PERCENTILE = 99.0
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Longest / shortest side allowed. A square centre crop of a 20:1 image already keeps only 5% of
# it; beyond that the crop says little about the product, and resizing the short side to the model
# edge would blow the long side up (1x20000 -> 224 x 4,480,000 pixels, ~4 GB). The decoder refuses
# such images (reason aspect_ratio); square_crop bounds its work for them regardless.
MAX_ASPECT_RATIO = 20


def square_crop(
    image: Image.Image, shortest_edge: int, crop: tuple[int, int], resample: int
) -> np.ndarray:
    """Resize like CLIPImageProcessor (shortest edge), centre-crop; HxWx3 uint8.

    The work is bounded by what is kept: up to MAX_ASPECT_RATIO the whole image is resized (at
    most MAX_ASPECT_RATIO x edge^2 pixels, bit-identical to the processor); beyond it the centre
    square is cut from the source first and only that square is resized, so a 1x20000 image never
    becomes 224 x 4,480,000 pixels. (The decoder refuses such images anyway: reason aspect_ratio.)
    """
    width, height = image.size
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return centre_square_then_resize(image, crop, resample)
    if width <= height:
        size = (shortest_edge, int(shortest_edge * height / width))
    else:
        size = (int(shortest_edge * width / height), shortest_edge)
    array = np.asarray(image.resize(size, resample=resample))
    top = (array.shape[0] - crop[0]) // 2
    left = (array.shape[1] - crop[1]) // 2
    return np.ascontiguousarray(array[top : top + crop[0], left : left + crop[1]])


def centre_square_then_resize(
    image: Image.Image, crop: tuple[int, int], resample: int
) -> np.ndarray:
    """Cut the centre square (short side x short side) from the source, resize it to `crop`."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return np.ascontiguousarray(np.asarray(square.resize((crop[1], crop[0]), resample=resample)))


def make_views(rgb: np.ndarray, views: Sequence[str]) -> dict[str, np.ndarray]:
    """The requested views of one HxWx3 uint8 crop."""
    builders = {"color": lambda: rgb, "structure": lambda: structure_view(rgb)}
    return {view: builders[view]() for view in views}


def structure_view(rgb: np.ndarray) -> np.ndarray:
    """Grey image with contours drawn dark (see the module docstring); HxWx3 uint8."""
    grey = rgb.astype(np.float32) @ LUMA
    edges = edge_strength(blur3(grey))
    sketch = GREY_WEIGHT * grey + (1 - GREY_WEIGHT) * 255.0 * (1.0 - edges)
    out = np.clip(np.rint(sketch), 0, 255).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def blur3(grey: np.ndarray) -> np.ndarray:
    padded = np.pad(grey, 1, mode="edge")
    rows = (padded[:-2, :] + 2 * padded[1:-1, :] + padded[2:, :]) / 4
    return (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) / 4


def sobel(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal and vertical Sobel derivatives with edge padding (same shape as the input)."""
    p = np.pad(grey, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return gx, gy


def edge_strength(grey: np.ndarray) -> np.ndarray:
    """Gradient magnitude scaled to [0, 1] by a high percentile; all zeros for a flat image."""
    gx, gy = sobel(grey)
    magnitude = np.hypot(gx, gy)
    scale = float(np.percentile(magnitude, EDGE_PERCENTILE))
    if scale < 1e-6:
        return np.zeros_like(magnitude)
    return np.clip(magnitude / scale, 0.0, 1.0)


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation with the norm clamped at 1e-12 (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return (vectors / norms).astype(np.float32)


def fuse_combined(color: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """concat / sqrt(2): inner product of two fused vectors = mean of the two cosines."""
    fused = np.concatenate([color, structure], axis=1) / np.sqrt(np.float32(2.0))
    return l2_normalise(fused)


def assemble_kinds(
    by_view: Mapping[str, np.ndarray], kinds: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-kind vectors from per-view vectors; combined is fused, never embedded separately."""
    out = {}
    for kind in kinds:
        if kind == "combined":
            out[kind] = fuse_combined(by_view["color"], by_view["structure"])
        else:
            out[kind] = by_view[kind]
    return out
