"""embed_refs end to end over the local server: the bad-input zoo, order, one download per image."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from modal_workers.embedders import ImageEmbedder
from modal_workers.pipeline import embed_query_image, embed_refs
from modal_workers.reasons import ImageRefused
from modal_workers.types import KINDS, EmbedOutput, FetchLimits, ImageRef
from tests.support.image_server import ZOO_CASES, ImageServer, upright_reference
from tests.support.photos import PHOTO_NAMES


@pytest.fixture(scope="module")
def zoo_output(image_server: ImageServer, clip_embedder: ImageEmbedder) -> EmbedOutput:
    refs = [ImageRef(case.name, image_server.zoo_url(case)) for case in ZOO_CASES]
    limits = FetchLimits(allow_private_urls=True, timeout_s=1.5, retries=1)
    return embed_refs(refs, KINDS, clip_embedder, limits)


def test_zoo_has_at_least_15_kinds() -> None:
    assert len(ZOO_CASES) >= 15


@pytest.mark.parametrize("case", ZOO_CASES, ids=lambda case: case.name)
def test_zoo_case_outcome(case, zoo_output: EmbedOutput) -> None:  # type: ignore[no-untyped-def]
    outcomes = {f.id: f.reason for f in zoo_output.failures} | dict.fromkeys(zoo_output.ids, "ok")
    assert outcomes[case.name] == case.expected


def test_zoo_vectors_are_aligned_and_normalised(
    zoo_output: EmbedOutput, clip_embedder: ImageEmbedder
) -> None:
    expected_ok = [case.name for case in ZOO_CASES if case.expected == "ok"]
    assert zoo_output.ids == expected_ok  # input order kept
    for kind in KINDS:
        assert zoo_output.vectors[kind].shape == (len(expected_ok), clip_embedder.dims[kind])
        np.testing.assert_allclose(np.linalg.norm(zoo_output.vectors[kind], axis=1), 1, atol=1e-5)


def test_exif_rotated_jpeg_embeds_like_the_upright_photo(
    zoo_output: EmbedOutput, clip_embedder: ImageEmbedder
) -> None:
    upright = clip_embedder.embed([upright_reference()], KINDS)
    row = zoo_output.ids.index("exif_rotated_jpeg")
    for kind in KINDS:
        assert float(zoo_output.vectors[kind][row] @ upright[kind][0]) > 0.995
    sideways = clip_embedder.embed([upright_reference().rotate(90, expand=True)], ["color"])
    assert float(sideways["color"][0] @ upright["color"][0]) < 0.995


def test_many_refs_keep_order_across_forward_batches(
    image_server: ImageServer, histogram_embedder: ImageEmbedder, local_limits: FetchLimits
) -> None:
    refs = []
    for i in range(30):
        path = f"/photos/{PHOTO_NAMES[i % len(PHOTO_NAMES)]}.jpg" if i % 4 else "/status/404"
        refs.append(ImageRef(i, image_server.url(path)))
    output = embed_refs(refs, ["color"], histogram_embedder, local_limits, forward_batch=4)
    assert output.ids == [i for i in range(30) if i % 4]
    assert [f.id for f in output.failures] == [i for i in range(30) if i % 4 == 0]
    single = embed_refs(refs[5:6], ["color"], histogram_embedder, local_limits)
    np.testing.assert_allclose(
        output.vectors["color"][output.ids.index(5)], single.vectors["color"][0]
    )


def test_one_download_serves_all_kinds(
    image_server: ImageServer, histogram_embedder: ImageEmbedder, local_limits: FetchLimits
) -> None:
    image_server.hits.clear()
    url = image_server.add("/once.jpg", image_server.routes["/photos/rocket.jpg"][0])
    output = embed_refs([ImageRef("x", url)], KINDS, histogram_embedder, local_limits)
    assert output.ids == ["x"] and set(output.vectors) == set(KINDS)
    assert image_server.hits["/once.jpg"] == 1


def test_no_successes_gives_empty_arrays_of_the_right_width(
    clip_embedder: ImageEmbedder, local_limits: FetchLimits
) -> None:
    output = embed_refs([ImageRef(1, "ftp://x/y.jpg")], ["combined"], clip_embedder, local_limits)
    assert output.ids == [] and output.vectors["combined"].shape == (0, 32)
    assert output.failures[0].reason == "bad_scheme"


def test_private_urls_refused_by_default(
    image_server: ImageServer, histogram_embedder: ImageEmbedder
) -> None:
    output = embed_refs(
        [ImageRef(1, image_server.url("/photos/coffee.jpg"))], ["color"], histogram_embedder
    )
    assert output.failures[0].reason == "private_address"


def test_query_image_from_path_or_url(
    photos_dir: Path,
    image_server: ImageServer,
    clip_embedder: ImageEmbedder,
    local_limits: FetchLimits,
) -> None:
    by_path = embed_query_image(
        str(photos_dir / "coffee.jpg"), ["color"], clip_embedder, local_limits
    )
    url = image_server.add("/query.jpg", (photos_dir / "coffee.jpg").read_bytes())
    by_url = embed_query_image(url, ["color"], clip_embedder, local_limits)
    np.testing.assert_allclose(by_path["color"], by_url["color"], atol=1e-6)
    with pytest.raises(ImageRefused, match="fetch_http_404"):
        embed_query_image(image_server.url("/status/404"), ["color"], clip_embedder, local_limits)


def test_local_catalog_files(photos_dir: Path, histogram_embedder: ImageEmbedder) -> None:
    limits = dataclasses.replace(FetchLimits(), local_root=str(photos_dir))
    output = embed_refs(
        [ImageRef(1, "coffee.jpg"), ImageRef(2, "nope.jpg")], ["color"], histogram_embedder, limits
    )
    assert output.ids == [1] and output.failures[0].reason == "file_not_found"
