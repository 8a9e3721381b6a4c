"""A local Supabase Storage API that answers as DESIGN.md §5 describes, with switchable faults."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

PREFIX = "/storage/v1/"
NOT_FOUND = {"statusCode": "404", "error": "not_found", "message": "Object not found"}
DUPLICATE = {"statusCode": "409", "error": "Duplicate", "message": "The resource already exists"}
TOO_LARGE = {
    "statusCode": "413",
    "error": "Payload too large",
    "message": "The object exceeded the maximum allowed size",
}
UNAUTHORIZED = {"statusCode": "403", "error": "Unauthorized", "message": "Invalid Compact JWS"}
BUCKET_NOT_FOUND = {"statusCode": "404", "error": "Bucket not found", "message": "Bucket not found"}


@dataclass
class StoredObject:
    data: bytes
    content_type: str
    updated: float = field(default_factory=time.time)


@dataclass
class Fault:
    """One switchable misbehaviour: answer `status`, reset, stall, or apply then reset."""

    action: str  # "status" | "reset" | "stall" | "lose_response"
    remaining: int = 1
    status: int = 503
    stall_s: float = 2.0
    method: str | None = None
    path_contains: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method in (None, method)) and (
            self.path_contains is None or self.path_contains in path
        )


class Faults:
    """Faults to inject; each queued fault fires on the next matching requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Fault] = []
        self._rate = 0.0
        self._rng = random.Random(0)
        self._rate_actions: tuple[str, ...] = ("status",)
        self.gateway_413 = False  # answer oversize with a bare, non-JSON 413 like a gateway
        self.fired: list[tuple[str, str, str]] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._queue.append(fault)
        return fault

    def fail_next(self, n: int = 1, status: int = 503, **match: Any) -> Fault:
        return self.add(Fault("status", n, status=status, **match))

    def reset_next(self, n: int = 1, **match: Any) -> Fault:
        return self.add(Fault("reset", n, **match))

    def stall_next(self, n: int = 1, seconds: float = 2.0, **match: Any) -> Fault:
        return self.add(Fault("stall", n, stall_s=seconds, **match))

    def lose_response_next(self, n: int = 1, **match: Any) -> Fault:
        return self.add(Fault("lose_response", n, **match))

    def set_rate(self, rate: float, seed: int = 0, actions: tuple[str, ...] = ("status",)) -> None:
        """Fail a fraction of all requests at random (seeded, so runs repeat)."""
        with self._lock:
            self._rate, self._rng, self._rate_actions = rate, random.Random(seed), actions

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
            self._rate = 0.0
        self.gateway_413 = False

    def pending(self) -> int:
        with self._lock:
            return sum(f.remaining for f in self._queue)

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._queue:
                if fault.remaining > 0 and fault.matches(method, path):
                    fault.remaining -= 1
                    self.fired.append((fault.action, method, path))
                    return fault
            if self._rate and self._rng.random() < self._rate:
                action = self._rng.choice(self._rate_actions)
                self.fired.append((action, method, path))
                return Fault(action, status=self._rng.choice([500, 502, 503]))
        return None


@dataclass
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]


class SupabaseStorageServer:
    """Threaded HTTP server on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(
        self,
        key: str = "service-role-test-key",
        buckets: tuple[str, ...] = ("faiss",),
        max_object_bytes: int = 50_000_000,
    ) -> None:
        self.key = key
        self.buckets = set(buckets)
        self.max_object_bytes = max_object_bytes
        self.objects: dict[str, StoredObject] = {}  # "bucket/path" -> object
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> SupabaseStorageServer:
        handler = type("Handler", (_Handler,), {"app": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SupabaseStorageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def object_names(self, bucket: str, prefix: str = "") -> list[str]:
        with self.lock:
            start = f"{bucket}/{prefix}"
            return sorted(k[len(bucket) + 1 :] for k in self.objects if k.startswith(start))

    def list_rows(self, bucket: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Like storage's list: entries directly inside `prefix` (a folder), folders without id."""
        folder = str(body.get("prefix") or "").strip("/")
        search = str(body.get("search") or "")
        base = f"{bucket}/{folder}/" if folder else f"{bucket}/"
        entries: dict[str, dict[str, Any]] = {}
        with self.lock:
            for key, obj in self.objects.items():
                if not key.startswith(base):
                    continue
                rest = key[len(base) :]
                name, is_folder = rest.split("/", 1)[0], "/" in rest
                if name.startswith(search):
                    entries[name] = _row(name, obj, is_folder)
        order = (body.get("sortBy") or {}).get("order", "asc")
        rows = sorted(entries.values(), key=lambda r: r["name"], reverse=order == "desc")
        offset, limit = int(body.get("offset", 0)), int(body.get("limit", 100))
        return rows[offset : offset + limit]


def _row(name: str, obj: StoredObject, is_folder: bool) -> dict[str, Any]:
    if is_folder:
        return {"name": name, "id": None, "updated_at": None, "metadata": None}
    meta = {"size": len(obj.data), "mimetype": obj.content_type}
    return {"name": name, "id": str(uuid.uuid4()), "metadata": meta}


class _Reset(Exception):
    """Drop the connection with a TCP reset instead of answering."""


class _Handler(BaseHTTPRequestHandler):
    app: SupabaseStorageServer
    protocol_version = "HTTP/1.1"
    # One buffered write per answer, no Nagle: avoids 40 ms delayed-ACK stalls per request.
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        path = unquote(urlsplit(self.path).path)
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.app.lock:
            self.app.requests.append(RequestRecord(self.command, path, headers))
        try:
            self._dispatch(path, body, headers)
        except _Reset:
            self._reset()

    def _dispatch(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        fault = self.app.faults.take(self.command, path)
        if fault is not None and fault.action != "lose_response":
            self._misbehave(fault)
            return
        if not self._authorised(headers):
            self._json(400, UNAUTHORIZED)
            return
        status, payload, content_type = self._route(path, body, headers)
        if fault is not None:  # lose_response: the request took effect, the answer never arrives
            raise _Reset
        self._send(status, payload, content_type)

    def _misbehave(self, fault: Fault) -> None:
        if fault.action == "reset":
            raise _Reset
        if fault.action == "stall":
            time.sleep(fault.stall_s)
            raise _Reset
        self._json(
            fault.status,
            {
                "statusCode": str(fault.status),
                "error": "Internal",
                "message": "injected server fault",
            },
        )

    def _authorised(self, headers: dict[str, str]) -> bool:
        key = self.app.key
        return headers.get("apikey") == key and headers.get("authorization") == f"Bearer {key}"

    def _route(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        if not path.startswith(PREFIX + "object/"):
            return _error(
                404, {"statusCode": "404", "error": "not_found", "message": "Route not found"}
            )
        rest = path[len(PREFIX + "object/") :]
        if rest.startswith("list/") and self.command == "POST":
            return self._list(rest[len("list/") :], body)
        if rest.startswith("info/") and self.command == "GET":
            return self._info(rest[len("info/") :])
        bucket, _, name = rest.partition("/")
        if bucket not in self.app.buckets:
            return _error(400, BUCKET_NOT_FOUND)
        if self.command == "DELETE" and not name:
            return self._delete(bucket, body)
        if self.command == "GET":
            return self._download(bucket, name)
        if self.command in ("POST", "PUT"):
            return self._upload(bucket, name, body, headers)
        return _error(400, {"statusCode": "400", "error": "InvalidRequest", "message": "bad route"})

    def _list(self, bucket: str, body: bytes) -> tuple[int, bytes, str]:
        if bucket not in self.app.buckets:
            return _error(400, BUCKET_NOT_FOUND)
        rows = self.app.list_rows(bucket, json.loads(body or b"{}"))
        return 200, json.dumps(rows).encode(), "application/json"

    def _info(self, rest: str) -> tuple[int, bytes, str]:
        with self.app.lock:
            obj = self.app.objects.get(rest)
        if obj is None:
            return _error(400, NOT_FOUND)
        info = {
            "name": rest.split("/", 1)[-1],
            "size": len(obj.data),
            "content_type": obj.content_type,
        }
        return 200, json.dumps(info).encode(), "application/json"

    def _download(self, bucket: str, name: str) -> tuple[int, bytes, str]:
        with self.app.lock:
            obj = self.app.objects.get(f"{bucket}/{name}")
        if obj is None:
            return _error(400, NOT_FOUND)
        return 200, obj.data, obj.content_type

    def _upload(
        self, bucket: str, name: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, str]:
        data, content_type = _file_part(body, headers.get("content-type", ""))
        if len(data) > self.app.max_object_bytes:
            if self.app.faults.gateway_413:
                return 413, b"<html><body>413 Request Entity Too Large</body></html>", "text/html"
            return _error(400, TOO_LARGE)
        key = f"{bucket}/{name}"
        with self.app.lock:
            exists = key in self.app.objects
            if self.command == "PUT" and not exists:
                return _error(400, NOT_FOUND)
            if self.command == "POST" and exists and headers.get("x-upsert") != "true":
                return _error(400, DUPLICATE)
            self.app.objects[key] = StoredObject(data, content_type)
        return 200, json.dumps({"Key": key, "Id": str(uuid.uuid4())}).encode(), "application/json"

    def _delete(self, bucket: str, body: bytes) -> tuple[int, bytes, str]:
        prefixes = json.loads(body or b"{}").get("prefixes", [])
        if len(prefixes) > 1000:
            return _error(
                400,
                {"statusCode": "400", "error": "InvalidRequest", "message": "too many prefixes"},
            )
        removed = []
        with self.app.lock:
            for name in prefixes:
                if self.app.objects.pop(f"{bucket}/{name}", None) is not None:
                    removed.append({"name": name, "bucket_id": bucket})
        return 200, json.dumps(removed).encode(), "application/json"

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: int, payload: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _reset(self) -> None:
        # SO_LINGER 0 makes close() send RST: the client sees a connection reset.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def finish(self) -> None:
        # The client may be gone (timeouts, resets): nothing left to flush to.
        with contextlib.suppress(OSError):
            super().finish()


def _error(status: int, payload: dict[str, Any]) -> tuple[int, bytes, str]:
    return status, json.dumps(payload).encode(), "application/json"


def _file_part(body: bytes, content_type: str) -> tuple[bytes, str]:
    """The `file` part of a multipart upload: its bytes and its own content type."""
    if "multipart/form-data" not in content_type:
        return body, content_type or "application/octet-stream"
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    for part in _parts(body, boundary):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return data, _part_content_type(head)
    return b"", "application/octet-stream"


def _parts(body: bytes, boundary: bytes) -> Iterator[bytes]:
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            return
        yield chunk[2:-2]  # strip the CRLF after the boundary and before the next one


def _part_content_type(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-type:"):
            return line.split(":", 1)[1].strip()
    return "application/octet-stream"
