"""Decoder: format sniffing, pixel cap, draft decode, EXIF orientation, RGB conversion per mode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modal_workers.decode import decode_image, sniff_format, to_rgb
from modal_workers.reasons import ImageRefused
from tests.support.image_server import encode, upright_reference, zoo_payloads
from tests.support.photos import load_photo

BIG = 40_000_000


def decode_zoo(name: str, target: int = 224, max_pixels: int = BIG) -> Image.Image:
    return decode_image(zoo_payloads()[name][0], max_pixels, target)


def refusal_reason(data: bytes, max_pixels: int = BIG) -> str:
    with pytest.raises(ImageRefused) as info:
        decode_image(data, max_pixels, 224)
    return info.value.reason


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("wrong_content_type", "JPEG"),
        ("la_png", "PNG"),
        ("animated_gif", "GIF"),
        ("webp", "WEBP"),
        ("tiff", "TIFF"),
        ("html_as_jpeg", None),
        ("svg", None),
    ],
)
def test_format_comes_from_the_bytes(name: str, fmt: str | None) -> None:
    assert sniff_format(zoo_payloads()[name][0]) == fmt


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated_jpeg", "decode_error"),
        ("html_as_jpeg", "not_an_image"),
        ("empty_body", "empty_body"),
        ("pixel_bomb_png", "pixel_bomb"),
        ("tiff", "unsupported_format"),
        ("svg", "not_an_image"),
    ],
)
def test_bad_bytes_are_refused_with_a_reason(name: str, reason: str) -> None:
    assert refusal_reason(zoo_payloads()[name][0]) == reason


def test_pixel_cap_is_checked_before_decoding() -> None:
    data = encode(load_photo("coffee"), "PNG")  # 600x400 = 240,000 pixels
    assert refusal_reason(data, max_pixels=200_000) == "pixel_bomb"
    assert decode_image(data, 240_000, 224).size == (600, 400)


@pytest.mark.parametrize(
    "name",
    [
        "cmyk_jpeg",
        "palette_transparency_png",
        "la_png",
        "png_16bit",
        "animated_gif",
        "grayscale_jpeg",
        "webp",
        "exif_rotated_jpeg",
        "wrong_content_type",
    ],
)
def test_unusual_modes_become_rgb(name: str) -> None:
    image = decode_zoo(name)
    assert image.mode == "RGB"
    assert min(image.size) >= 100


def test_exif_orientation_is_applied() -> None:
    upright = upright_reference()
    decoded = decode_zoo("exif_rotated_jpeg", target=10_000)
    assert decoded.size == upright.size
    difference = np.abs(np.asarray(decoded, np.float32) - np.asarray(upright, np.float32))
    assert difference.mean() < 4.0


def test_jpeg_draft_decodes_near_the_target_size() -> None:
    big = load_photo("astronaut").resize((1200, 1200))
    decoded = decode_image(encode(big, "JPEG", quality=90), BIG, 224)
    assert 224 <= min(decoded.size) <= 448  # libjpeg scaled 1/4 instead of a full decode


def test_animated_gif_uses_the_first_frame() -> None:
    pixels = np.asarray(decode_zoo("animated_gif"), np.float32)
    blue_frame = np.array([0, 0, 255], np.float32)
    assert np.abs(pixels - blue_frame).mean() > 50


def test_transparency_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    grey = Image.fromarray(np.full((4, 4), 32768, np.uint16))
    assert grey.mode.startswith("I")
    assert to_rgb(grey).getpixel((0, 0)) == (128, 128, 128)


def test_cmyk_conversion_is_the_same_every_time() -> None:
    first = np.asarray(decode_zoo("cmyk_jpeg"))
    assert np.array_equal(first, np.asarray(decode_zoo("cmyk_jpeg")))
