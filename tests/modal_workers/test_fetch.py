"""Fetcher: SSRF refusals, redirects re-checked, deadline, byte cap, retries, local paths."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from modal_workers import fetch
from modal_workers.fetch import fetch_image_bytes, is_public_address, open_client
from modal_workers.reasons import REASONS, ImageRefused
from modal_workers.types import FetchLimits
from tests.support.image_server import ImageServer


def refusal(url: str, limits: FetchLimits) -> str:
    with open_client(limits) as client:
        try:
            fetch_image_bytes(url, limits, client)
        except ImageRefused as exc:
            return exc.reason
    return "ok"


@pytest.fixture
def strict() -> FetchLimits:
    return FetchLimits(timeout_s=2.0, retries=0)


@pytest.fixture
def fresh_hits(image_server: ImageServer) -> Iterator[ImageServer]:
    image_server.hits.clear()
    yield image_server


SSRF_URLS = [
    "http://127.0.0.1:{port}/photos/coffee.jpg",
    "http://localhost:{port}/photos/coffee.jpg",
    "http://2130706433:{port}/photos/coffee.jpg",  # decimal-encoded 127.0.0.1
    "http://0x7f000001:{port}/photos/coffee.jpg",  # hex-encoded
    "http://[::1]:{port}/photos/coffee.jpg",
    "http://[::ffff:127.0.0.1]:{port}/photos/coffee.jpg",  # IPv4-mapped IPv6
    "http://10.1.2.3/a.jpg",
    "http://192.168.0.10/a.jpg",
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://100.64.0.1/a.jpg",  # carrier-grade NAT
    "http://0.0.0.0:{port}/a.jpg",
    # IPv6 spellings that embed a private IPv4 address (issue 13 item 13)
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # NAT64 -> 169.254.169.254
    "http://[64:ff9b::127.0.0.1]:{port}/photos/coffee.jpg",  # NAT64, dotted spelling
    "http://[2002:7f00:1::1]:{port}/photos/coffee.jpg",  # 6to4 -> 127.0.0.1
    "http://[2002:a9fe:a9fe::]/latest/meta-data/",  # 6to4 -> 169.254.169.254
    "http://[::127.0.0.1]:{port}/photos/coffee.jpg",  # IPv4-compatible
    "http://[::7f00:1]:{port}/photos/coffee.jpg",  # IPv4-compatible, hex spelling
    "http://[::ffff:7f00:1]:{port}/photos/coffee.jpg",  # IPv4-mapped, hex spelling
    "http://[::ffff:169.254.169.254]/latest/meta-data/",  # IPv4-mapped metadata
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/a.jpg",  # Teredo, client 127.0.0.1
    "http://[64:ff9b:1::a9fe:a9fe]/a.jpg",  # local-use NAT64 prefix
]


@pytest.mark.parametrize("template", SSRF_URLS)
def test_private_hosts_are_refused_before_connecting(
    template: str, fresh_hits: ImageServer, strict: FetchLimits
) -> None:
    assert refusal(template.format(port=fresh_hits.port), strict) == "private_address"
    assert sum(fresh_hits.hits.values()) == 0


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://x/", "/etc/passwd", "a.jpg"]
)
def test_non_http_is_refused_without_a_local_catalog(url: str, strict: FetchLimits) -> None:
    assert refusal(url, strict) == "bad_scheme"


@pytest.mark.parametrize(
    "target", ["http://127.0.0.2:{port}/photos/coffee.jpg", "http://[::1]:{port}/x"]
)
def test_redirect_to_loopback_is_refused(
    target: str, fresh_hits: ImageServer, strict: FetchLimits, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pretend the test server's own address is public, so only the redirect hop is judged private.
    monkeypatch.setattr(fetch, "is_public_address", lambda address: address == "127.0.0.1")
    url = fresh_hits.url("/redirect?to=" + target.format(port=fresh_hits.port))
    assert refusal(url, strict) == "private_address"
    assert fresh_hits.hits["/redirect"] == 1


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1%1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("64:ff9b::10.0.0.1", False),
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8 is as public as 8.8.8.8
        ("64:ff9b:1::a9fe:a9fe", False),
        ("2002:7f00:1::1", False),
        ("2002:c0a8:101::1", False),  # 6to4 of 192.168.1.1
        ("2002:808:808::1", True),
        ("::127.0.0.1", False),
        ("::a9fe:a9fe", False),
        ("::ffff:7f00:1", False),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_transient_500_is_retried_until_success(
    fresh_hits: ImageServer, local_limits: FetchLimits
) -> None:
    assert refusal(fresh_hits.url("/flaky/a?fails=1"), local_limits) == "ok"
    assert fresh_hits.hits["/flaky/a"] == 2


def test_retries_are_bounded(fresh_hits: ImageServer) -> None:
    limits = FetchLimits(allow_private_urls=True, retries=2, timeout_s=5)
    assert refusal(fresh_hits.url("/flaky/b?fails=9"), limits) == "fetch_http_500"
    assert fresh_hits.hits["/flaky/b"] == 3


@pytest.mark.parametrize(
    ("path", "reason"), [("/status/404", "fetch_http_404"), ("/status/403", "fetch_http_403")]
)
def test_permanent_errors_are_not_retried(
    path: str, reason: str, fresh_hits: ImageServer, local_limits: FetchLimits
) -> None:
    assert refusal(fresh_hits.url(path), local_limits) == reason
    assert fresh_hits.hits[path] == 1


def test_connection_reset_is_retried_then_reported(
    fresh_hits: ImageServer, local_limits: FetchLimits
) -> None:
    assert refusal(fresh_hits.url("/reset"), local_limits) == "fetch_error"
    assert fresh_hits.hits["/reset"] == 2


def test_slow_drip_stops_at_the_total_deadline(image_server: ImageServer) -> None:
    limits = FetchLimits(allow_private_urls=True, timeout_s=1.0)
    started = time.monotonic()
    assert refusal(image_server.url("/drip"), limits) == "fetch_timeout"
    assert time.monotonic() - started < 1.8


def test_byte_cap_applies_while_streaming(image_server: ImageServer) -> None:
    limits = FetchLimits(allow_private_urls=True, max_bytes=10_000)
    assert refusal(image_server.url("/photos/astronaut.png"), limits) == "too_large"


def test_redirect_hops_are_counted(image_server: ImageServer) -> None:
    limits = FetchLimits(allow_private_urls=True, max_redirects=2)
    assert refusal(image_server.url("/chain/2"), limits) == "ok"
    assert refusal(image_server.url("/chain/3"), limits) == "too_many_redirects"


def test_returns_the_served_bytes(image_server: ImageServer, local_limits: FetchLimits) -> None:
    body, _ = image_server.routes["/photos/coffee.jpg"]
    with open_client(local_limits) as client:
        assert (
            fetch_image_bytes(image_server.url("/photos/coffee.jpg"), local_limits, client) == body
        )


def test_local_catalog_paths(photos_dir: Path) -> None:
    limits = FetchLimits(local_root=str(photos_dir))
    assert refusal("coffee.jpg", limits) == "ok"
    assert refusal(f"file://{photos_dir / 'coffee.jpg'}", limits) == "ok"
    assert refusal("missing.jpg", limits) == "file_not_found"
    assert (
        refusal("coffee.jpg", FetchLimits(local_root=str(photos_dir), max_bytes=100)) == "too_large"
    )


def test_every_reason_code_is_documented() -> None:
    assert {"private_address", "fetch_timeout", "too_large", "pixel_bomb", "bad_scheme"} <= set(
        REASONS
    )


@pytest.fixture
def catalog_dir(tmp_path: Path, photos_dir: Path) -> Path:
    """A catalog folder three levels deep, with one photo, a sub-folder and hostile links."""
    folder = tmp_path / "a" / "b" / "catalog"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "coffee.jpg").write_bytes((photos_dir / "coffee.jpg").read_bytes())
    (folder / "etc-link.jpg").symlink_to("/etc/hostname")
    (folder / "up-link").symlink_to(tmp_path)
    (tmp_path / "outside.jpg").write_bytes((photos_dir / "coffee.jpg").read_bytes())
    return folder


@pytest.mark.parametrize(
    "path",
    [
        "../../../../etc/passwd",
        "../../../../../../../../../../etc/passwd",
        "/etc/hostname",
        "/etc/passwd",
        "file:///etc/passwd",
        "file://localhost/etc/passwd",
        "file:///etc/%70asswd",  # percent-encoded
        "sub/../../../../outside.jpg",
        "etc-link.jpg",  # a symlink inside the folder that points outside
        "up-link/outside.jpg",  # a symlinked folder that leads outside
        "../../outside.jpg",
    ],
)
def test_local_paths_stay_inside_the_catalog_folder(path: str, catalog_dir: Path) -> None:
    limits = FetchLimits(local_root=str(catalog_dir))
    with pytest.raises(ImageRefused) as info:
        fetch.read_local_file(path, limits)
    assert info.value.reason == "outside_catalog_folder"
    assert "root:" not in info.value.message and "outside_catalog_folder" in REASONS


def test_paths_inside_the_folder_still_work(catalog_dir: Path) -> None:
    limits = FetchLimits(local_root=str(catalog_dir))
    assert refusal("sub/coffee.jpg", limits) == "ok"
    assert refusal("./sub/../sub/coffee.jpg", limits) == "ok"
    assert refusal(str(catalog_dir / "sub" / "coffee.jpg"), limits) == "ok"
    assert refusal(f"file://{catalog_dir / 'sub' / 'coffee.jpg'}", limits) == "ok"


def test_an_allowed_root_widens_what_local_paths_may_reach(catalog_dir: Path) -> None:
    wider = catalog_dir.parents[2]  # tmp_path: holds outside.jpg
    limits = FetchLimits(local_root=str(catalog_dir), local_allowed_root=str(wider))
    assert refusal("../../../outside.jpg", limits) == "ok"
    assert refusal("up-link/outside.jpg", limits) == "ok"
    assert refusal("/etc/hostname", limits) == "outside_catalog_folder"


def test_a_non_image_local_file_is_refused_without_its_bytes(tmp_path: Path) -> None:
    (tmp_path / "passwd.jpg").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    from modal_workers.embedders import load_embedder
    from modal_workers.pipeline import embed_refs
    from modal_workers.types import ImageRef

    output = embed_refs(
        [ImageRef(1, "passwd.jpg")],
        ["color"],
        load_embedder("histogram"),
        FetchLimits(local_root=str(tmp_path)),
    )
    (failure,) = output.failures
    assert failure.reason == "not_an_image"
    assert "root" not in failure.message and "32 bytes" in failure.message


@pytest.mark.parametrize(
    "url", ["http://xn--a.com/x.jpg", "http://xn--ls8h.la/x.jpg", "http://[::1/x.jpg"]
)
def test_hosts_that_are_not_valid_names_are_bad_urls(url: str, strict: FetchLimits) -> None:
    assert refusal(url, strict) == "bad_url"
