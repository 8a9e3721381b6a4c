"""`faiss-builder demo`: a catalog from bundled photographs, built, checked and searched end to end."""

from __future__ import annotations

import csv
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from application.settings import load_settings
from faiss_builder.errors import UsageError
from modal_workers.embedders import DEFAULT_CLIP_MODEL
from modal_workers.types import KINDS

MARKER = ".faiss-builder-demo"
#: scikit-image ships these photographs inside the package: no download needed.
BRANDS: dict[str, tuple[str, ...]] = {
    "Northwind": ("astronaut", "rocket"),
    "Cafe Arcadia": ("coffee",),
    "Tabby & Co": ("chelsea",),
    "Deep Field": ("hubble_deep_field",),
    "Lab Optics": ("immunohistochemistry", "retina"),
}
QUERY_PHOTO = "coffee"

Echo = Callable[[str], None]


def run_demo(folder: Path, *, products: int, embedder: str, echo: Echo) -> None:
    """Generate the catalog, build all three kinds, run the alignment check, search one image."""
    from application.queries import search_store
    from application.verify import run_alignment_check
    from faiss_builder.runner import run_build

    started = time.monotonic()
    _prepare_folder(folder)
    catalog, query = make_demo_catalog(folder, products)
    chosen = choose_embedder(embedder, echo)
    echo(f"demo: {products} products from bundled photographs in {catalog}")
    settings = load_settings(
        store=str(folder / "store"),
        catalog=str(catalog),
        embedder=chosen,
        model=DEFAULT_CLIP_MODEL,
        batch_size=64,
        kinds=KINDS,
    )
    summary = run_build(settings, show_progress=True)
    vectors = ", ".join(f"{kind} {count}" for kind, count in summary["total_vectors"].items())
    echo(
        f"built vectors: {vectors} with {summary['embedder']} ({summary['model']}); "
        f"{summary['failed']} failed; {summary['images_per_s']} images/s"
    )
    outcome = run_alignment_check(settings, sample=8, kinds=None)
    echo(outcome["text"].splitlines()[0])
    result = search_store(settings, kind="color", k=5, image=str(query), product_id=None)
    echo(f"search: products most like {query.name} ({result['embedder']}):")
    for rank, hit in enumerate(result["hits"], start=1):
        echo(
            f"  {rank}. id={hit['id']:<5} brand={hit['brand'] or '-':<13} score={hit['score']:.4f}"
        )
    echo(f"demo finished in {time.monotonic() - started:.1f} s; store: {folder / 'store'}")
    echo(f"next: faiss-builder search --store {folder / 'store'} --id 42 --kind structure")
    echo(
        f"serve it: faiss-builder serve --store {folder / 'store'} --catalog {catalog} "
        "(then open http://127.0.0.1:8000/)"
    )
    if not outcome["ok"]:
        raise RuntimeError("demo alignment check failed")


def choose_embedder(requested: str, echo: Echo) -> str:
    """CLIP when its weights can be loaded here; otherwise say so and use the histogram embedder."""
    if requested in {"clip", "histogram"}:
        return requested
    if clip_weights_cached(DEFAULT_CLIP_MODEL):
        return "clip"
    echo(
        f"demo: CLIP weights for {DEFAULT_CLIP_MODEL} are not on this machine, so this demo uses "
        "the weight-free histogram embedder (run `faiss-builder demo --embedder clip` on a machine "
        "with network access to download them)."
    )
    return "histogram"


def clip_weights_cached(model: str) -> bool:
    """True when `model` is a local folder or its weights are already in the Hugging Face cache."""
    if Path(model).is_dir():
        return True
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(model, name), str)
        for name in ("model.safetensors", "pytorch_model.bin")
    )


def make_demo_catalog(folder: Path, products: int, seed: int = 7) -> tuple[Path, Path]:
    """Write `products` photo variants grouped by brand plus an unseen query image; CSV path, query."""
    rng = random.Random(seed)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    sources = [(brand, name) for brand, names in BRANDS.items() for name in names]
    originals = {name: _load_photo(name) for _, name in sources}
    catalog = folder / "catalog.csv"
    with catalog.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image_url", "brand"])
        for product_id in range(1, products + 1):
            brand, name = sources[(product_id - 1) % len(sources)]
            path = images / f"{product_id:05d}.jpg"
            make_variant(originals[name], rng).save(path, "JPEG", quality=88)
            writer.writerow([product_id, f"images/{path.name}", brand])
    query = folder / f"query-{QUERY_PHOTO}.jpg"
    make_variant(originals[QUERY_PHOTO], random.Random(seed + 1)).save(query, "JPEG", quality=88)
    return catalog, query


def make_variant(image: Image.Image, rng: random.Random) -> Image.Image:
    """A product-photo-like variant: random crop, maybe a mirror, a colour and brightness shift."""
    width, height = image.size
    scale = rng.uniform(0.6, 0.95)
    crop_w, crop_h = int(width * scale), int(height * scale)
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    variant = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        variant = ImageOps.mirror(variant)
    variant = _shift_hue(variant, rng.uniform(-0.06, 0.06))
    variant = ImageEnhance.Brightness(variant).enhance(rng.uniform(0.8, 1.2))
    variant.thumbnail((512, 512))
    return variant


def _shift_hue(image: Image.Image, amount: float) -> Image.Image:
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(amount * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _load_photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")


def _prepare_folder(folder: Path) -> None:
    """Start clean in a folder the demo made before; never touch a folder it did not make."""
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MARKER).exists():
            raise UsageError(f"{folder} exists and was not made by the demo; choose --folder")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by faiss-builder demo; safe to delete\n")
