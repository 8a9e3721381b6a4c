"""Decode untrusted image bytes once: sniff format, refuse bombs, draft-decode, orient, make RGB."""

from __future__ import annotations

import io
import math
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modal_workers.reasons import ImageRefused
from modal_workers.views import MAX_ASPECT_RATIO

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
WHITE = (255, 255, 255, 255)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


BYTES_LITERAL = re.compile(r"""\bb(['"])(?:\\.|(?!\1).)*\1""")


def without_bytes(text: str) -> str:
    """A library message with any bytes literal (b'...') blanked: messages never echo content."""
    return BYTES_LITERAL.sub("<bytes>", text)


def sniff_format(data: bytes) -> str | None:
    """The format named by the leading bytes (the Content-Type header is never trusted)."""
    signatures = (
        (b"\xff\xd8\xff", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"GIF87a", "GIF"),
        (b"GIF89a", "GIF"),
        (b"BM", "BMP"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"\x00\x00\x01\x00", "ICO"),
        (b"8BPS", "PSD"),
        (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    )
    for prefix, name in signatures:
        if data.startswith(prefix):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF"
    return None


def check_format(data: bytes) -> str:
    if not data:
        raise ImageRefused("empty_body", "no bytes")
    kind = sniff_format(data)
    if kind is None:  # never echo the bytes: they may be a secret file, not an image
        head = data[:64].lstrip().lower()
        hint = " (looks like HTML/XML/JSON)" if head.startswith((b"<", b"{")) else ""
        raise ImageRefused(
            "not_an_image", f"{len(data)} bytes that are not a supported image format{hint}"
        )
    if kind not in ALLOWED_FORMATS:
        raise ImageRefused("unsupported_format", f"{kind} is not one of {ALLOWED_FORMATS}")
    return kind


def decode_image(data: bytes, max_pixels: int, target_edge: int) -> Image.Image:
    """An upright RGB image, its shortest edge reduced (JPEG) to no less than `target_edge`."""
    return finish_decode(*open_for_decode(data, max_pixels, target_edge))


def open_for_decode(data: bytes, max_pixels: int, target_edge: int) -> tuple[Image.Image, str]:
    """The checked, not yet decoded image and its format; `.size` is what decoding will produce.

    Every refusal that needs only the header happens here (format, pixel count, aspect ratio),
    so a caller can reserve memory for `image.size` before `finish_decode` allocates it.
    """
    kind = check_format(data)
    image = open_checked(data, kind, max_pixels)
    if kind == "JPEG":
        request_draft(image, target_edge)
    return image, kind


def finish_decode(image: Image.Image, kind: str) -> Image.Image:
    """Decode the pixels of an image from open_for_decode, orient it, make it RGB."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageRefused("pixel_bomb", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRefused("decode_error", f"{kind}: {without_bytes(str(exc))}") from exc
    return to_rgb(apply_orientation(image))


def open_checked(data: bytes, kind: str, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse too many pixels before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRefused("pixel_bomb", str(exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRefused("decode_error", f"{kind}: {without_bytes(str(exc))}") from exc
    width, height = image.size
    if width * height > max_pixels or width <= 0 or height <= 0:
        raise ImageRefused("pixel_bomb", f"{width}x{height} exceeds {max_pixels} pixels")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageRefused("aspect_ratio", f"{width}x{height} is longer than {MAX_ASPECT_RATIO}:1")
    return image


def request_draft(image: Image.Image, target_edge: int) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the shortest edge stays >= target."""
    width, height = image.size
    scale = target_edge / min(width, height)
    if scale < 1:
        image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))


def apply_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        return image  # a corrupt EXIF block only loses the rotation, not the image


def to_rgb(image: Image.Image) -> Image.Image:
    """One RGB conversion per mode: alpha over white, 16-bit scaled to 8-bit, rest via Pillow."""
    if image.mode == "RGB":
        return image
    if image.mode in HIGH_BIT_MODES or image.mode == "F":
        return high_bit_to_rgb(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def high_bit_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit int) grey maps 0..65535 onto 0..255; float grey is clipped to 0..255."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode != "F":
        values = values / 257.0
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, "L").convert("RGB")
