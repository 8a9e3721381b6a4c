"""The failure reason codes (one place) and the exception that carries them."""

from __future__ import annotations

# Every refused image becomes FailedProduct(id, reason, message) with one of these codes.
REASONS: dict[str, str] = {
    "bad_url": "the URL cannot be parsed or has no host",
    "bad_scheme": "not http(s), and not a local catalog path (needs FetchLimits.local_root)",
    "private_address": "host resolves to a private/loopback/link-local/reserved address",
    "dns_error": "the host name does not resolve",
    "too_many_redirects": "more than FetchLimits.max_redirects redirect hops",
    "fetch_timeout": "the per-image wall-clock deadline passed (connect, read or slow drip)",
    "fetch_error": "connection refused/reset or protocol error after the allowed retries",
    "fetch_http_error": "an HTTP error status; the code is in the name, e.g. fetch_http_404",
    "too_large": "body larger than FetchLimits.max_bytes",
    "empty_body": "the response or file has no bytes",
    "file_not_found": "a local catalog path that does not exist or is not a file",
    "outside_catalog_folder": "a local path (.., symlink, absolute, file://) that resolves outside "
    "the catalog's folder or FetchLimits.local_allowed_root",
    "not_an_image": "the bytes are not an image (HTML, text, unknown signature)",
    "unsupported_format": "an image format outside JPEG/PNG/GIF/WEBP/BMP",
    "pixel_bomb": "width x height above FetchLimits.max_pixels (checked before decoding)",
    "aspect_ratio": "longest side above views.MAX_ASPECT_RATIO (20) x the shortest (header check)",
    "decode_error": "the image is truncated or corrupt",
    "not_signed": "a private-bucket path Supabase Storage would not sign (missing object or access)",
    "unexpected_error": "an unexpected error while preparing this one image (message has the type)",
    "worker_lost": "the Modal call of its batch failed after every retry (crash, timeout, preemption)",
}


def http_reason(status: int) -> str:
    """Reason code for an HTTP error status, e.g. fetch_http_404."""
    return f"fetch_http_{status}"


class ImageRefused(Exception):
    """An image that is refused for a documented reason; never aborts a batch."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
