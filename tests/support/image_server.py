"""A threaded local HTTP image server: real photos and a zoo of bad inputs, for tests and benches.

    with ImageServer() as server:
        server.url("/photos/coffee.jpg")              # real photograph (also .png)
        server.url("/zoo/cmyk_jpeg")                  # one ZOO_CASES entry
        server.add("/mine.jpg", data, "image/jpeg")   # serve your own bytes
        server.hits["/zoo/server_error"]              # how many requests reached a path

Dynamic routes: /status/<code>, /drip (1 byte every 0.1 s for up to 20 s), /reset (TCP reset),
/flaky/<key>?fails=N (HTTP 500 for the first N requests of that key, then a photo),
/redirect?to=<url> (302), /chain/<n> (n redirects, then a photo), /loop (redirects forever).
"""

from __future__ import annotations

import functools
import io
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from tests.support.photos import PHOTO_NAMES, load_photo

OVERSIZE_BYTES = 21_000_000  # just above FetchLimits.max_bytes default (20 MB)


@dataclass(frozen=True)
class ZooCase:
    """One bad (or merely unusual) input and what the pipeline must do with it."""

    name: str
    expected: str  # "ok" (embedded) or the reason code of the refusal
    note: str


ZOO_CASES: tuple[ZooCase, ...] = (
    ZooCase("truncated_jpeg", "decode_error", "a JPEG cut in half"),
    ZooCase("html_as_jpeg", "not_an_image", "an HTML error page served as image/jpeg"),
    ZooCase("empty_body", "empty_body", "200 with no bytes"),
    ZooCase("wrong_content_type", "ok", "a real JPEG served as text/plain (bytes decide)"),
    ZooCase("pixel_bomb_png", "pixel_bomb", "a tiny PNG whose IHDR claims 50000x50000"),
    ZooCase("oversize_body", "too_large", "21 MB streamed without Content-Length"),
    ZooCase("oversize_declared", "too_large", "Content-Length of 21 MB, refused before reading"),
    ZooCase("cmyk_jpeg", "ok", "a CMYK JPEG"),
    ZooCase("palette_transparency_png", "ok", "palette PNG with a transparent index"),
    ZooCase("la_png", "ok", "grey + alpha PNG"),
    ZooCase("png_16bit", "ok", "16-bit greyscale PNG"),
    ZooCase("animated_gif", "ok", "three-frame GIF (first frame is used)"),
    ZooCase("exif_rotated_jpeg", "ok", "pixels stored sideways + EXIF orientation 6"),
    ZooCase("grayscale_jpeg", "ok", "single-channel JPEG"),
    ZooCase("webp", "ok", "a WEBP photo"),
    ZooCase("tiff", "unsupported_format", "a TIFF (not a web format)"),
    ZooCase("svg", "not_an_image", "an SVG document"),
    ZooCase(
        "slow_drip", "fetch_timeout", "headers, then 1 byte every 0.1 s (needs a short deadline)"
    ),
    ZooCase("not_found", "fetch_http_404", "404"),
    ZooCase("server_error", "fetch_http_500", "500 on every attempt"),
    ZooCase("connection_reset", "fetch_error", "TCP reset instead of a response"),
    ZooCase("redirect_chain", "ok", "3 redirects, then a photo"),
    ZooCase("redirect_loop", "too_many_redirects", "redirects forever"),
)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pixel_bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid 8x8 PNG whose IHDR is rewritten (with a correct CRC) to claim a huge size."""
    png = bytearray(encode(Image.new("RGB", (8, 8), "red"), "PNG"))
    ihdr_data = bytearray(png[16:29])
    ihdr_data[0:8] = struct.pack(">II", width, height)
    png[16:29] = ihdr_data
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr_data)))
    return bytes(png)


def exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """Pixels stored turned 90° counter-clockwise, EXIF orientation 6 (display: turn clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)


def upright_reference() -> Image.Image:
    """The upright photo behind exif_rotated_jpeg (non-square, so a missed rotation shows)."""
    return load_photo("chelsea")


def animated_gif() -> bytes:
    frames = [load_photo("coffee").resize((200, 133)), Image.new("RGB", (200, 133), "blue")]
    frames.append(Image.new("RGB", (200, 133), "green"))
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def palette_png() -> bytes:
    image = load_photo("astronaut").resize((128, 128)).convert("P", palette=Image.Palette.ADAPTIVE)
    return encode(image, "PNG", transparency=0)


def png_16bit() -> bytes:
    grey = np.asarray(load_photo("astronaut").convert("L"), dtype=np.uint16)
    return encode(Image.fromarray(grey * 257), "PNG")


@functools.cache
def zoo_payloads() -> dict[str, tuple[bytes, str]]:
    """name -> (body, content type) for the static zoo cases."""
    coffee = load_photo("coffee")
    jpeg = encode(coffee, "JPEG", quality=90)
    return {
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "image/jpeg"),
        "html_as_jpeg": (b"<!doctype html><html><body>Not Found</body></html>", "image/jpeg"),
        "empty_body": (b"", "image/jpeg"),
        "wrong_content_type": (jpeg, "text/plain"),
        "pixel_bomb_png": (pixel_bomb_png(), "image/png"),
        "cmyk_jpeg": (encode(coffee.convert("CMYK"), "JPEG", quality=90), "image/jpeg"),
        "palette_transparency_png": (palette_png(), "image/png"),
        "la_png": (encode(coffee.convert("LA"), "PNG"), "image/png"),
        "png_16bit": (png_16bit(), "image/png"),
        "animated_gif": (animated_gif(), "image/gif"),
        "exif_rotated_jpeg": (exif_rotated_jpeg(upright_reference()), "image/jpeg"),
        "grayscale_jpeg": (encode(coffee.convert("L"), "JPEG", quality=90), "image/jpeg"),
        "webp": (encode(coffee, "WEBP", quality=90), "image/webp"),
        "tiff": (encode(coffee, "TIFF"), "image/tiff"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "image/jpeg"),
    }


@functools.cache
def photo_payloads() -> dict[str, tuple[bytes, str]]:
    out = {}
    for name in PHOTO_NAMES:
        photo = load_photo(name)
        out[f"/photos/{name}.jpg"] = (encode(photo, "JPEG", quality=90), "image/jpeg")
        out[f"/photos/{name}.png"] = (encode(photo, "PNG"), "image/png")
    return out


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops SYNs under 16 concurrent clients

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # resets and clients that give up early are part of the zoo


class ImageServer:
    """Start with `with ImageServer() as server:` (or start()/stop()); URLs from url(path)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, tuple[bytes, str]] = dict(photo_payloads())
        self.routes.update({f"/zoo/{k}": v for k, v in zoo_payloads().items()})
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.httpd = QuietServer((host, 0), make_handler(self))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def zoo_url(self, case: ZooCase | str) -> str:
        return self.url(f"/zoo/{case if isinstance(case, str) else case.name}")

    def add(self, path: str, body: bytes, content_type: str = "image/jpeg") -> str:
        self.routes[path] = (body, content_type)
        return self.url(path)

    def count(self, path: str) -> None:
        with self.lock:
            self.hits[path] += 1

    def start(self) -> ImageServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def make_handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(ZooHandler):
        owner = server

    return Handler


class ZooHandler(BaseHTTPRequestHandler):
    owner: ImageServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        self.owner.count(parts.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        special = self.special_route(parts.path, query)
        if special is not None:
            special()
        elif parts.path in self.owner.routes:
            self.send_body(*self.owner.routes[parts.path])
        else:
            self.send_body(b"not found", "text/plain", status=404)

    def special_route(self, path: str, query: dict[str, str]):  # type: ignore[no-untyped-def]
        head, _, rest = path.lstrip("/").partition("/")
        routes = {
            "status": lambda: self.send_body(b"status", "text/plain", status=int(rest)),
            "redirect": lambda: self.redirect(query["to"]),
            "chain": lambda: (
                self.redirect(self.owner.url(f"/chain/{int(rest) - 1}"))
                if int(rest) > 0
                else self.send_body(*self.owner.routes["/photos/coffee.jpg"])
            ),
            "loop": lambda: self.redirect("/loop"),
            "flaky": lambda: self.flaky(path, int(query.get("fails", "1"))),
            "drip": self.drip,
            "reset": self.reset,
        }
        zoo_dynamic = {
            "/zoo/slow_drip": self.drip,
            "/zoo/not_found": lambda: self.send_body(b"nope", "text/html", status=404),
            "/zoo/server_error": lambda: self.send_body(b"oops", "text/html", status=500),
            "/zoo/connection_reset": self.reset,
            "/zoo/redirect_chain": lambda: self.redirect("/chain/2"),
            "/zoo/redirect_loop": lambda: self.redirect("/loop"),
            "/zoo/oversize_body": lambda: self.oversize(declare=False),
            "/zoo/oversize_declared": lambda: self.oversize(declare=True),
        }
        return zoo_dynamic.get(path) or routes.get(head)

    def send_body(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def flaky(self, path: str, fails: int) -> None:
        if self.owner.hits[path] <= fails:
            self.send_body(b"try again", "text/plain", status=500)
        else:
            self.send_body(*self.owner.routes["/photos/coffee.jpg"])

    def drip(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()
        try:
            for byte in (b"\xff\xd8\xff" + bytes(200))[:200]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the client gave up, as it should

    def reset(self) -> None:
        # SO_LINGER 0 makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def oversize(self, declare: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if declare:
            self.send_header("Content-Length", str(OVERSIZE_BYTES))
        self.end_headers()
        chunk = bytes(1 << 20)
        try:
            self.wfile.write(b"\xff\xd8\xff")
            for _ in range(OVERSIZE_BYTES // len(chunk) + 1):
                self.wfile.write(chunk)
        except OSError:
            pass
