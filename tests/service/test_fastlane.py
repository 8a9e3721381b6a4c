"""The fast lane (service.fastlane): it answers unfiltered id queries of a kind with an
approximate index on the event loop, exactly as the FastAPI route would, and passes every other
request, its body intact, to the route."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from service.fastlane import MAX_BODY, FastLane
from tests.service.conftest import serve, wait_for_commit
from tests.service.test_searcher_ann import N, _store

# --- the middleware alone, around a recording app -----------------------------------------


class Recorder:
    """An ASGI app that answers 418 with the body it received."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": body})


def call(
    lane: FastLane, chunks: list[bytes], *, method: str = "POST", path: str = "/search",
    content_type: bytes = b"application/json",
) -> tuple[int, bytes]:  # fmt: skip
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(b"host", b"x"), (b"content-type", content_type)]}  # fmt: skip
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(lane(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_the_lane_answers_what_answer_returns_and_the_app_is_not_called() -> None:
    app = Recorder()
    seen: list[bytes] = []

    def answer(body: bytes, headers: Any) -> bytes | None:
        seen.append(body)
        return b'{"fast": true}'

    lane = FastLane(app, answer)
    assert call(lane, [b'{"id":', b" 1}"]) == (200, b'{"fast": true}')
    assert seen == [b'{"id": 1}'] and app.calls == 0  # the chunks joined, the route untouched


@pytest.mark.parametrize(
    "request_",
    [
        {"method": "GET"},
        {"path": "/search/image"},
        {"content_type": b"multipart/form-data; boundary=x"},
    ],
)
def test_other_requests_go_to_the_app_untouched(request_: dict[str, Any]) -> None:
    app = Recorder()
    lane = FastLane(app, lambda body, headers: pytest.fail("asked to answer"))
    assert call(lane, [b"abc", b"def"], **request_) == (418, b"abcdef")
    assert app.calls == 1


def test_a_declined_or_long_body_is_replayed_whole_to_the_app() -> None:
    app = Recorder()
    lane = FastLane(app, lambda body, headers: None)
    assert call(lane, [b'{"id": 1,', b' "k": 0}']) == (418, b'{"id": 1, "k": 0}')
    long = [b"x" * 3000, b"y" * 3000, b"z" * 3000]  # over MAX_BODY: not read to the end first
    assert sum(map(len, long)) > MAX_BODY
    assert call(lane, long) == (418, b"".join(long))
    assert app.calls == 2


# --- the service: the same requests with and without the lane --------------------------

BODIES: list[Any] = [
    {"id": 7},
    {"id": 7, "k": 3},
    {"id": "7", "k": 1},
    {"id": N, "k": 100, "kind": "color"},
    {"id": 11, "k": 10, "exact": False},
    # everything below is the route's to answer
    {"id": 7, "exact": True},
    {"id": 7, "brand": "b1"},
    {"id": 7, "brand": "nobody"},
    {"id": N + 1},
    {"id": "seven"},
    {"id": 7, "k": 0},
    {"id": 7, "k": 101},
    {"id": 7, "kind": "structure"},
    {"id": 7, "kind": "sepia"},
    {"id": 7, "text": "a red bag"},
    {"id": 7, "colour": "red"},
    {"text": "a red bag"},
    {},
    [7],
    "not json",
]
ANSWERED = 5  # the first five are the lane's


def _post(client: Any, body: Any, **headers: str) -> tuple[int, Any]:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    response = client.post(
        "/search", content=data, headers={"content-type": "application/json", **headers}
    )
    return response.status_code, response.json()


def test_the_lane_and_the_route_answer_every_request_alike(tmp_path: Path) -> None:
    _store(tmp_path, local=True)
    store, catalog = tmp_path / "store", tmp_path / "catalog.csv"
    with serve(store, catalog) as fast, serve(store, catalog, fast_lane=False) as plain:
        assert wait_for_commit(fast.client)["approximate"] == ["color"]
        wait_for_commit(plain.client)
        assert plain.app.state.fast_lane is None
        lane = fast.app.state.fast_lane
        headers = [(b"content-type", b"application/json")]
        for number, body in enumerate(BODIES):
            got, expected = _post(fast.client, body), _post(plain.client, body)
            assert got == expected, body
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            answered = lane(raw, headers)
            if number < ANSWERED:
                assert got[0] == 200 and answered is not None, body
                assert json.loads(answered) == got[1]
                assert got[1]["results"][0]["id"] == int(body["id"])  # the product itself first
            else:
                assert answered is None, body
        statuses = [_post(fast.client, body)[0] for body in BODIES[ANSWERED:]]
        # exact, two brand filters: answered by the route; the rest refused (the text query:
        # 503, this store's embedder cannot be loaded here)
        assert statuses == [200, 200, 200] + [400] * 8 + [503] + [400] * 3


def test_the_lane_checks_the_api_key_like_the_route(tmp_path: Path) -> None:
    _store(tmp_path, local=True)
    store, catalog = tmp_path / "store", tmp_path / "catalog.csv"
    with (
        serve(store, catalog, api_key="s3cret") as fast,
        serve(store, catalog, api_key="s3cret", fast_lane=False) as plain,
    ):
        wait_for_commit(fast.client)
        wait_for_commit(plain.client)
        for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": "s3cret"}):
            got = _post(fast.client, {"id": 7}, **headers)
            assert got == _post(plain.client, {"id": 7}, **headers)
            assert got[0] == (200 if headers.get("x-api-key") == "s3cret" else 401)
            assert "s3cret" not in json.dumps(got[1])
