"""Hostile images (issue 13 items 1 and 14): aspect-ratio bombs are refused with bounded memory,
one batch's decoded pixels are capped, and no failure message echoes the file's bytes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modal_workers.budget import PixelBudget
from modal_workers.decode import decode_image, without_bytes
from modal_workers.embedders import ImageEmbedder
from modal_workers.pipeline import embed_refs
from modal_workers.reasons import REASONS, ImageRefused
from modal_workers.types import FetchLimits, ImageRef
from modal_workers.views import MAX_ASPECT_RATIO, square_crop
from tests.support.image_server import encode

ROOT = Path(__file__).resolve().parents[2]
# Old code: a 1x20000 PNG became 224 x 4,480,000 pixels (PIL ~4 GB, numpy ~3 GB) before cropping.
ADDRESS_SPACE_CAP = 1 << 30  # 1 GiB of virtual memory for the whole child process
RSS_GROWTH_CAP_KB = 200_000  # the preparation itself must stay far below the old 4.9 GB


def run_capped(code: str) -> dict:
    """Run `code` in a child whose address space is capped; it prints one JSON line."""
    prelude = (
        "import json, resource\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE_CAP}, {ADDRESS_SPACE_CAP}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("size", [(1, 20_000), (20_000, 1), (3, 100_000)])
def test_square_crop_of_an_extreme_aspect_ratio_stays_small(size: tuple[int, int]) -> None:
    answer = run_capped(
        "from PIL import Image\n"
        "from modal_workers.views import square_crop\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        f"image = Image.new('RGB', {size}, (200, 30, 30))\n"
        "out = square_crop(image, 224, (224, 224), 3)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(json.dumps({'shape': list(out.shape), 'grown_kb': grown,"
        " 'pixel': out[100, 100].tolist()}))\n"
    )
    assert answer["shape"] == [224, 224, 3]
    assert answer["grown_kb"] < RSS_GROWTH_CAP_KB
    assert answer["pixel"] == [200, 30, 30]


def test_square_crop_below_the_limit_is_unchanged() -> None:
    """Up to MAX_ASPECT_RATIO the crop is the processor's (resize whole, then centre-crop)."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (40, 40 * MAX_ASPECT_RATIO, 3), dtype=np.uint8))
    resized = np.asarray(image.resize((224 * MAX_ASPECT_RATIO, 224), resample=3))
    left = (resized.shape[1] - 224) // 2
    np.testing.assert_array_equal(
        square_crop(image, 224, (224, 224), 3), resized[:, left : left + 224]
    )


@pytest.mark.parametrize("size", [(1, 20_000), (20_000, 1), (MAX_ASPECT_RATIO + 1, 1)])
def test_decoder_refuses_absurd_aspect_ratios_from_the_header(size: tuple[int, int]) -> None:
    with pytest.raises(ImageRefused) as info:
        decode_image(encode(Image.new("RGB", size), "PNG"), 40_000_000, 224)
    assert info.value.reason == "aspect_ratio" and "aspect_ratio" in REASONS
    assert f"{size[0]}x{size[1]}" in info.value.message


def test_twenty_to_one_is_still_accepted() -> None:
    assert decode_image(encode(Image.new("RGB", (400, 20)), "PNG"), 40_000_000, 224).size == (
        400,
        20,
    )


def test_bombs_in_a_batch_are_failures_and_memory_stays_bounded(tmp_path: Path) -> None:
    """Through the pipeline, in a child with 1 GiB of address space: recorded, never raised."""
    for name, size in {"tall": (1, 20_000), "wide": (20_000, 1), "ok": (300, 200)}.items():
        Image.new("RGB", size, "red").save(tmp_path / f"{name}.png")
    answer = run_capped(
        "from modal_workers.embedders import load_embedder\n"
        "from modal_workers.pipeline import embed_refs\n"
        "from modal_workers.types import FetchLimits, ImageRef\n"
        "embedder = load_embedder('histogram')\n"
        f"limits = FetchLimits(local_root={str(tmp_path)!r})\n"
        "refs = [ImageRef(i, n) for i, n in enumerate(['tall.png', 'wide.png', 'ok.png'] * 4)]\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = embed_refs(refs, ['color', 'combined'], embedder, limits)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print(json.dumps({'ids': out.ids, 'grown_kb': grown,"
        " 'failures': [[f.id, f.reason] for f in out.failures]}))\n"
    )
    assert answer["ids"] == [2, 5, 8, 11]
    assert answer["failures"] == [[i, "aspect_ratio"] for i in range(12) if i % 3 != 2]
    assert answer["grown_kb"] < RSS_GROWTH_CAP_KB


def test_pixel_budget_caps_what_threads_hold_at_once() -> None:
    budget = PixelBudget(10)
    holding: list[int] = []
    lock = threading.Lock()
    most = [0]

    def work(pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                holding.append(pixels)
                most[0] = max(most[0], sum(holding))
            time.sleep(0.02)
            with lock:
                holding.remove(pixels)

    threads = [threading.Thread(target=work, args=(p,)) for p in [4, 4, 4, 4, 25, 3, 3]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)  # the oversized one ran, alone
    assert budget.held == 0
    assert most[0] == 25 and budget.peak == 25  # 25 ran alone; everything else stayed <= 10


def test_pipeline_holds_at_most_the_pixel_cap(
    tmp_path: Path, histogram_embedder: ImageEmbedder
) -> None:
    Image.new("RGB", (1000, 1000), "blue").save(tmp_path / "big.png")  # 1 M pixels each
    refs = [ImageRef(i, "big.png") for i in range(24)]
    budget_limits = FetchLimits(local_root=str(tmp_path), max_pixels_in_flight=2_500_000)
    budget = PixelBudget(budget_limits.max_pixels_in_flight)
    output = embed_refs(refs, ["color"], histogram_embedder, budget_limits, budget=budget)
    assert len(output.ids) == 24 and not output.failures
    assert 1_000_000 <= budget.peak <= 2_000_000  # two 1 M-pixel images at most, of 16 threads
    assert budget.held == 0


@pytest.mark.parametrize(
    "content", [b"root:x:0:0:root:/root:/bin/bash\n", b"SECRET_KEY=abc123\n", b'{"k": 1}']
)
def test_a_non_image_is_refused_without_echoing_its_bytes(content: bytes) -> None:
    with pytest.raises(ImageRefused) as info:
        decode_image(content, 40_000_000, 224)
    assert info.value.reason == "not_an_image"
    assert f"{len(content)} bytes" in info.value.message
    assert content[:4].decode() not in str(info.value)
    assert "b'" not in str(info.value) and 'b"' not in str(info.value)


def test_library_messages_lose_their_bytes_literals() -> None:
    assert without_bytes("broken PNG file (chunk b'root')") == "broken PNG file (chunk <bytes>)"
    assert without_bytes("it's Job's") == "it's Job's"
