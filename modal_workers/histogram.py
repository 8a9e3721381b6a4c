"""A deterministic, weight-free embedder: CIELAB colour histograms and edge-orientation histograms.

color      joint histogram of CIELAB (L 4 bins x a 5 x b 5 = 100 bins; a/b have a neutral middle
           bin so greys do not flip between bins) over the whole crop and its 2x2 quadrants:
           5 x 100 = 500 dims. CIELAB is roughly perceptually uniform, so fixed bin edges mean
           similar perceived colour differences everywhere.
structure  magnitude-weighted histogram of unsigned gradient orientations (9 bins over 0-180°) on
           a 4x4 grid of the structure view: 144 dims (a small HOG without block normalisation).
combined   concat / sqrt(2): 644 dims.
Histograms are square-rooted (Hellinger) before L2 normalisation, so the inner product compares
distributions instead of being dominated by the largest bin.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modal_workers.embedder import SquareCropEmbedder
from modal_workers.views import l2_normalise, sobel

VERSION = "histogram-v1"
EDGE = 160
L_EDGES = np.array([25.0, 50.0, 75.0])
AB_EDGES = np.array([-25.0, -8.0, 8.0, 25.0])
GRID = 4
ORIENTATION_BINS = 9
COLOR_DIM = 5 * 4 * 5 * 5
STRUCTURE_DIM = GRID * GRID * ORIENTATION_BINS
RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
D65_WHITE = np.array([0.95047, 1.0, 1.08883])


class HistogramEmbedder(SquareCropEmbedder):
    """Colour and edge-orientation histograms; same input crop as CLIP, smaller size."""

    name = "histogram"
    model_id = VERSION
    model_digest = VERSION  # weight-free: the algorithm version is the whole identity
    decode_edge = EDGE
    crop = (EDGE, EDGE)

    def __init__(self) -> None:
        self.dims = {
            "color": COLOR_DIM,
            "structure": STRUCTURE_DIM,
            "combined": COLOR_DIM + STRUCTURE_DIM,
        }

    def embed_views(self, batches: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        makers = {"color": color_histogram, "structure": orientation_histogram}
        return {
            view: l2_normalise(np.sqrt(np.stack([makers[view](image) for image in batch])))
            for view, batch in batches.items()
        }


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 HxWx3 -> CIELAB (D65) float HxWx3."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = (linear @ RGB_TO_XYZ.T) / D65_WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lightness = 116 * f[..., 1] - 16
    return np.stack(
        [lightness, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1
    )


def color_histogram(rgb: np.ndarray) -> np.ndarray:
    """Joint Lab histograms of the whole crop and its four quadrants, each summing to 1."""
    lab = srgb_to_lab(rgb)
    codes = (
        np.digitize(lab[..., 0], L_EDGES) * 25
        + np.digitize(lab[..., 1], AB_EDGES) * 5
        + np.digitize(lab[..., 2], AB_EDGES)
    )
    h, w = codes.shape
    regions = [codes] + [
        codes[r : r + h // 2, c : c + w // 2] for r in (0, h // 2) for c in (0, w // 2)
    ]
    return np.concatenate([np.bincount(r.ravel(), minlength=100) / r.size for r in regions])


def orientation_histogram(view: np.ndarray) -> np.ndarray:
    """Magnitude-weighted unsigned orientation histogram per cell of a GRID x GRID layout."""
    gx, gy = sobel(view[..., 0].astype(np.float64))
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.minimum((angle / np.pi * ORIENTATION_BINS).astype(np.int64), ORIENTATION_BINS - 1)
    h, w = bins.shape
    cell = (np.arange(h)[:, None] * GRID // h) * GRID + (np.arange(w)[None, :] * GRID // w)
    codes = cell * ORIENTATION_BINS + bins
    histogram = np.bincount(codes.ravel(), weights=magnitude.ravel(), minlength=STRUCTURE_DIM)
    return histogram / max(float(histogram.sum()), 1e-12)
