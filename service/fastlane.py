"""A fast lane for the one query that FastAPI's request handling would double: an id looked up in
an approximate index, which is answered in about a millisecond.

`FastLane` is an ASGI middleware inside the FastAPI app (under CORS and the server-error
handler, over the routes). For `POST /search` with a JSON body it reads the body and asks
`answer(body, headers)` for the finished JSON. `answer` returns bytes only for a request it
answers exactly as the route would (a success); for anything else it returns None, and the
request goes on to FastAPI unchanged, its body replayed. So every refusal, every other query,
and the OpenAPI document still come from the one FastAPI route, and the lane cannot answer
differently from it (tests/service/test_fastlane.py sends both the same requests).

What it saves: routing, dependency solving, the body's second parse and validation, and the
exception middleware, about 0.1 ms of server time a request here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Headers as the ASGI scope carries them: lower-cased names, raw bytes.
Headers = list[tuple[bytes, bytes]]
Answer = Callable[[bytes, Headers], bytes | None]

#: A search body larger than this is not one the lane answers (an id query is ~50 bytes).
MAX_BODY = 4096
PATH = "/search"


class FastLane:
    def __init__(self, app: ASGIApp, answer: Answer) -> None:
        self.app = app
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        headers: Headers = scope["headers"]
        if not _is_json(headers):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more and size <= MAX_BODY:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: FastAPI handles it
                await self.app(scope, _replay(chunks, True, receive, message), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = bool(message.get("more_body", False))
        payload = None if more else self.answer(b"".join(chunks), headers)
        if payload is None:
            await self.app(scope, _replay(chunks, more, receive), send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(payload)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _is_json(headers: Headers) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


def _replay(
    chunks: list[bytes], more: bool, receive: Receive, pending: Message | None = None
) -> Receive:
    """`receive` for the app behind the lane: the body read so far, then the rest as it comes."""
    queue: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": more}]
    if pending is not None:
        queue.append(pending)

    async def replayed() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replayed
