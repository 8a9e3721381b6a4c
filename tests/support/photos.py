"""Real photographs bundled with scikit-image, written out as JPEG/PNG files for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_NAMES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
)


def load_photo(name: str) -> Image.Image:
    from skimage import data

    array = np.asarray(getattr(data, name)())
    return Image.fromarray(array).convert("RGB")


def write_photos(directory: Path, names: tuple[str, ...] = PHOTO_NAMES) -> dict[str, Path]:
    """Write each photo as `<name>.jpg` (quality 90) and return name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        path = directory / f"{name}.jpg"
        load_photo(name).save(path, "JPEG", quality=90)
        paths[name] = path
    return paths
