"""The search API over a real uvicorn: answers, brand filters, text, uploads and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from faiss_builder.demo import BRANDS
from tests.service.conftest import PRODUCTS, Running, serve

NORTHWIND = "Northwind"


def _brand_of(product_id: int) -> str:
    sources = [brand for brand, names in BRANDS.items() for _ in names]
    return sources[(product_id - 1) % len(sources)]


def test_health_names_the_commit_and_live_vectors(histogram_service: Running) -> None:
    health = histogram_service.client.get("/health").json()
    assert health["commit"] >= 1 and health["embedder"] == "histogram"
    assert health["vectors"] == {"color": PRODUCTS, "structure": PRODUCTS, "combined": PRODUCTS}


@pytest.mark.parametrize("kind", ["color", "structure", "combined"])
def test_search_by_id_finds_the_product_first(histogram_service: Running, kind: str) -> None:
    response = histogram_service.client.post("/search", json={"id": 5, "kind": kind, "k": 4})
    body = response.json()
    assert response.status_code == 200 and body["kind"] == kind and body["commit"] >= 1
    assert [set(hit) for hit in body["results"]] == [{"id", "score", "brand", "image_url"}] * 4
    first = body["results"][0]
    assert first["id"] == 5 and first["score"] == pytest.approx(1.0, abs=1e-4)
    assert first["brand"] == _brand_of(5) and first["image_url"] == "/images/5"
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)


def test_default_kind_is_color_and_default_k_is_ten(histogram_service: Running) -> None:
    body = histogram_service.client.post("/search", json={"id": "7"}).json()
    assert body["kind"] == "color" and len(body["results"]) == 10
    assert body["results"][0]["id"] == 7


def test_brand_filter_returns_k_of_that_brand(histogram_service: Running) -> None:
    """Northwind is 2 of 7 products: a post-filter of the top 7 would return fewer than 7."""
    northwind = [pid for pid in range(1, PRODUCTS + 1) if _brand_of(pid) == NORTHWIND]
    body = histogram_service.client.post(
        "/search", json={"id": 3, "k": 7, "brand": NORTHWIND}
    ).json()
    ids = [hit["id"] for hit in body["results"]]
    assert len(ids) == 7 and {hit["brand"] for hit in body["results"]} == {NORTHWIND}
    assert set(ids) <= set(northwind)
    everything = histogram_service.client.post("/search", json={"id": 3, "k": PRODUCTS}).json()
    in_order = [hit["id"] for hit in everything["results"] if hit["brand"] == NORTHWIND][:7]
    assert ids == in_order  # the same neighbours, in the same order, as the unfiltered ranking


def test_brand_filter_asks_for_more_than_exist(histogram_service: Running) -> None:
    count = sum(1 for pid in range(1, PRODUCTS + 1) if _brand_of(pid) == "Cafe Arcadia")
    body = histogram_service.client.post(
        "/search", json={"id": 1, "k": 50, "brand": "Cafe Arcadia"}
    ).json()
    assert len(body["results"]) == count
    unknown = histogram_service.client.post("/search", json={"id": 1, "brand": "Nobody"}).json()
    assert unknown["results"] == []


def test_brands_lists_the_catalog_brands(histogram_service: Running) -> None:
    assert histogram_service.client.get("/brands").json()["brands"] == sorted(BRANDS)


def test_upload_finds_the_product_itself(histogram_service: Running, demo_catalog: Path) -> None:
    image = demo_catalog.parent / "images" / "00009.jpg"
    response = histogram_service.client.post(
        "/search/image",
        files={"file": ("query.jpg", image.read_bytes(), "image/jpeg")},
        data={"kind": "combined", "k": "3"},
    )
    body = response.json()
    assert response.status_code == 200, body
    assert (
        body["kind"] == "combined" and body["results"][0]["id"] == 9 and len(body["results"]) == 3
    )


def test_upload_with_brand_filter(histogram_service: Running, demo_catalog: Path) -> None:
    image = demo_catalog.parent / "images" / "00009.jpg"
    body = histogram_service.client.post(
        "/search/image",
        files={"file": ("query.jpg", image.read_bytes(), "image/jpeg")},
        data={"brand": "Lab Optics", "k": "5"},
    ).json()
    assert len(body["results"]) == 5 and {h["brand"] for h in body["results"]} == {"Lab Optics"}


def test_the_image_route_serves_the_catalog_file(
    histogram_service: Running, demo_catalog: Path
) -> None:
    response = histogram_service.client.get("/images/4")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content == (demo_catalog.parent / "images" / "00004.jpg").read_bytes()
    assert histogram_service.client.get("/images/999").status_code == 404


def test_image_url_query_goes_through_the_fetcher(
    histogram_service: Running, demo_catalog: Path
) -> None:
    from tests.support.image_server import ImageServer

    with ImageServer() as server:
        server.add("/p.jpg", (demo_catalog.parent / "images" / "00006.jpg").read_bytes())
        body = histogram_service.client.post(
            "/search", json={"image_url": server.url("/p.jpg"), "k": 2}
        ).json()
        assert body["results"][0]["id"] == 6
        missing = histogram_service.client.post(
            "/search", json={"image_url": server.url("/missing.jpg")}
        )
    assert missing.status_code == 400 and missing.json()["detail"].startswith("image_url refused")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"id": 999}, "id 999 is not in the color index"),
        ({"id": 1, "kind": "shape"}, "kind: Input should be"),
        ({"id": 1, "k": 0}, "k must be between 1 and 100"),
        ({"id": 1, "k": 101}, "k must be between 1 and 100"),
        ({"id": 1, "text": "red bag"}, "give exactly one of id, text, image_url"),
        ({}, "give exactly one of id, text, image_url (got none)"),
        ({"id": "abc"}, "this index has integer product ids"),
        ({"text": "red bag"}, "the histogram embedder has no text tower"),
        ({"image_url": "/etc/passwd"}, "image_url must be an http(s) URL"),
        ({"id": 1, "extra": 1}, "extra: Extra inputs are not permitted"),
    ],
)
def test_bad_requests_are_400_with_one_line(
    histogram_service: Running, body: dict, says: str
) -> None:
    response = histogram_service.client.post("/search", json=body)
    detail = response.json()["detail"]
    assert response.status_code == 400 and says in detail
    assert "\n" not in detail and "Traceback" not in detail


def test_malformed_json_is_400(histogram_service: Running) -> None:
    response = histogram_service.client.post(
        "/search", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "\n" not in response.json()["detail"]


def test_upload_refusals(histogram_service: Running) -> None:
    client = histogram_service.client
    not_image = client.post(
        "/search/image", files={"file": ("x.jpg", b"hello there", "image/jpeg")}
    )
    assert not_image.status_code == 400
    assert not_image.json()["detail"].startswith("upload refused: not_an_image")
    no_file = client.post("/search/image", data={"kind": "color"}, files={"other": ("a", b"b")})
    assert no_file.status_code == 400 and "field named `file`" in no_file.json()["detail"]
    bad_k = client.post("/search/image", files={"file": ("x", b"x")}, data={"k": "1000"})
    assert bad_k.status_code == 400 and "k must be between" in bad_k.json()["detail"]


def test_oversize_upload_is_413(histogram_store: Path, demo_catalog: Path) -> None:
    with serve(histogram_store, demo_catalog, max_upload_bytes=1000) as running:
        image = (demo_catalog.parent / "images" / "00001.jpg").read_bytes()
        assert len(image) > 1000
        response = running.client.post("/search/image", files={"file": ("a.jpg", image)})
        assert response.status_code == 413 and "1000-byte limit" in response.json()["detail"]

        def chunks() -> object:  # no Content-Length: the bound holds on what arrives
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
            for _ in range(40):
                yield b"x" * 4096

        chunked = running.client.post(
            "/search/image", content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )  # fmt: skip
        assert chunked.status_code == 413


def test_503_while_no_commit_is_loaded(tmp_path: Path) -> None:
    with serve(tmp_path / "empty-store", None) as running:
        for response in (
            running.client.get("/health"),
            running.client.post("/search", json={"id": 1}),
        ):
            assert response.status_code == 503
            assert response.json()["detail"].startswith("no commit loaded yet")


def test_api_key_when_configured(histogram_store: Path, demo_catalog: Path) -> None:
    with serve(histogram_store, demo_catalog, api_key="s3cret-key") as running:
        from tests.service.conftest import wait_for_commit

        wait_for_commit(running.client)
        refused = running.client.post("/search", json={"id": 1})
        assert refused.status_code == 401 and "s3cret" not in refused.text
        allowed = running.client.post(
            "/search", json={"id": 1}, headers={"X-API-Key": "s3cret-key"}
        )
        assert allowed.status_code == 200


def test_openapi_documents_the_routes(histogram_service: Running) -> None:
    schema = histogram_service.client.get("/openapi.json").json()
    assert {"/health", "/search", "/search/image"} <= set(schema["paths"])
    upload = schema["paths"]["/search/image"]["post"]["requestBody"]["content"]
    assert "file" in upload["multipart/form-data"]["schema"]["properties"]
    assert histogram_service.client.get("/docs").status_code == 200


def test_text_search_with_the_clip_text_tower(clip_service: Running) -> None:
    health = clip_service.client.get("/health").json()
    assert health["embedder"] == "clip"
    color = clip_service.client.post("/search", json={"text": "red bag", "k": 5}).json()
    assert color["kind"] == "color" and len(color["results"]) == 5
    combined = clip_service.client.post(
        "/search", json={"text": "red bag", "kind": "combined", "k": 5}
    ).json()
    assert len(combined["results"]) == 5
    again = clip_service.client.post("/search", json={"text": "red bag", "k": 5}).json()
    assert again["results"] == color["results"]
    structure = clip_service.client.post("/search", json={"text": "red bag", "kind": "structure"})
    assert (
        structure.status_code == 400
        and "text queries search the color or combined" in (structure.json()["detail"])
    )


def test_text_scores_are_cosines_with_the_stored_vectors(
    clip_service: Running, clip_store: Path, clip_text_model: Path
) -> None:
    """The service's text score equals the text vector (embedded here) · the stored vector."""
    import numpy as np

    from modal_workers.embedder import embed_text
    from modal_workers.embedders import load_embedder
    from sharding.loader import load_index
    from sharding.local_store import LocalStore

    text_vector = embed_text(load_embedder("clip", str(clip_text_model), device="cpu"), ["bag"])[0]
    index = load_index(LocalStore(clip_store), "color")
    body = clip_service.client.post("/search", json={"text": "bag", "k": 3}).json()
    for hit in body["results"]:
        expected = float(np.dot(index.vector(hit["id"]), text_vector))
        assert hit["score"] == pytest.approx(expected, abs=1e-4)


def test_concurrent_text_queries_all_answer_the_same(clip_service: Running) -> None:
    """Eight clients at once through one model and one tokenizer: every answer is the same."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def ask(_: int) -> tuple[int, list]:
        with httpx.Client(base_url=clip_service.url, timeout=60) as client:
            response = client.post("/search", json={"text": "red leather bag", "k": 5})
            return response.status_code, response.json().get("results", [])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(32)))
    assert {status for status, _ in answers} == {200}
    first = answers[0][1]
    assert all(
        [hit["id"] for hit in results] == [hit["id"] for hit in first] for _, results in answers
    )


def test_upload_takes_exact_where_an_approximate_index_serves(
    demo_catalog: Path, tmp_path: Path
) -> None:
    """A store with a deliberately coarse IVF (nprobe 1, served whatever its recall): an upload
    answers the IVF's ranking, and with the form field exact=true the flat scan's."""
    import faiss
    import numpy as np
    from PIL import Image

    from modal_workers.embedders import load_embedder
    from sharding import BuildConfig, EmbeddedBatch, IndexWriter, LocalStore
    from sharding.ann import AnnConfig, update_ann
    from sharding.codec import ProductId

    embedder = load_embedder("histogram")
    images = [Image.open(demo_catalog.parent / "images" / f"{i:05d}.jpg") for i in (1, 2, 3)]
    queries = embedder.embed(images, ["color"])["color"]
    dim = queries.shape[1]
    rng = np.random.default_rng(3)
    x = np.abs(rng.standard_normal((3000, dim))).astype(np.float32) ** 4  # sparse, histogram-like
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = LocalStore(tmp_path / "store")
    config = BuildConfig(embedder="histogram", model=embedder.model_id,
                         dims={"color": dim}, shard_max_vectors=500)  # fmt: skip
    writer = IndexWriter.open(store, config, run_id="run")
    for s in range(0, 3000, 500):
        ids = list[ProductId](range(s + 1, s + 501))
        writer.add_batch(EmbeddedBatch(ids, [None] * 500, {"color": x[s : s + 500]}))
        writer.commit()
    writer.finish()
    coarse = AnnConfig(min_vectors=0, min_recall=0.0, first_nprobe=1, max_nlist=64)
    assert update_ann(store, "color", coarse, run_id="ann").state is not None
    _, flat = faiss.knn(queries, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    with serve(tmp_path / "store", None) as running:
        from tests.service.conftest import wait_for_commit

        assert wait_for_commit(running.client)["approximate"] == ["color"]
        differed = 0
        for number, expected in zip((1, 2, 3), flat, strict=True):
            photo = (demo_catalog.parent / "images" / f"{number:05d}.jpg").read_bytes()
            answers = {}
            for exact in ("true", "false"):
                response = running.client.post(
                    "/search/image", files={"file": ("q.jpg", photo, "image/jpeg")},
                    data={"k": "10", "exact": exact},
                )  # fmt: skip
                assert response.status_code == 200, response.text
                answers[exact] = [hit["id"] for hit in response.json()["results"]]
            # the same ten as the flat scan (near-equal scores may swap places: sets compared)
            assert set(answers["true"]) == {int(row) + 1 for row in expected}
            differed += set(answers["false"]) != set(answers["true"])
        assert differed >= 1  # nprobe 1 misses neighbours: the flag changed the answer
        bad = running.client.post(
            "/search/image", files={"file": ("q.jpg", photo, "image/jpeg")}, data={"exact": "sure"}
        )
        assert bad.status_code == 400 and bad.json()["detail"] == (
            "exact 'sure' is not a boolean (true or false)"
        )
        schema = running.client.get("/openapi.json").json()
        form = schema["paths"]["/search/image"]["post"]["requestBody"]["content"]
        assert "exact" in form["multipart/form-data"]["schema"]["properties"]
