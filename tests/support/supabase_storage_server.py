"""A local Supabase Storage API that answers as the real supabase/storage server (v1.70.6) does:
the error shapes and token handling sharding/supabase_store.py relies on, with switchable faults."""

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


def _body(status: str, error: str, message: str, code: str) -> dict[str, Any]:
    return {"statusCode": status, "error": error, "message": message, "code": code}


# Every error body carries `code` (supabase/storage src/internal/errors/codes.ts), sent as HTTP 400.
NOT_FOUND = _body("404", "not_found", "Object not found", "NoSuchKey")
BUCKET_NOT_FOUND = _body("404", "Bucket not found", "Bucket not found", "NoSuchBucket")
DUPLICATE = _body("409", "Duplicate", "The resource already exists", "KeyAlreadyExists")
TOO_LARGE = _body(
    "413", "Payload too large", "The object exceeded the maximum allowed size", "EntityTooLarge"
)
UNAUTHORIZED = _body("403", "Unauthorized", "Invalid Compact JWS", "AccessDenied")
ROW_LEVEL_SECURITY = _body(
    "403", "Unauthorized", "new row violates row-level security policy", "AccessDenied"
)
SIGN_MISSING = "Either the object does not exist or you do not have access to it"

#: Who a request is, from the JWT in `Authorization: Bearer` only (storage ignores `apikey`).
SERVICE, ANON, INVALID = "service_role", "anon", "invalid"


@dataclass
class StoredObject:
    data: bytes
    content_type: str
    updated: float = field(default_factory=time.time)
    cache_control: str = "no-cache"


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
    at: float = field(default_factory=time.monotonic)  # when it arrived (this process's clock)


class SupabaseStorageServer:
    """Threaded HTTP server on 127.0.0.1; use as a context manager or start()/stop().

    Answers as the real supabase/storage (v1.70.6) does, for private buckets: `key` is the
    service-role JWT, `anon_key` the anon one, any other token (or none) is invalid. An invalid
    token on a download or info route is read as anonymous, so a private bucket answers "Bucket
    not found"; elsewhere it is 403. A valid anon key sees no object (downloads "Object not
    found", lists [], signs per-path errors), writes nothing (403 row-level security) and sees
    no bucket record. `max_object_bytes` is the project's upload limit, `bucket_limits` each
    bucket's own file_size_limit (get_bucket shows it).
    """

    def __init__(
        self,
        key: str = "service-role-test-key",
        buckets: tuple[str, ...] = ("faiss",),
        max_object_bytes: int = 50_000_000,
        anon_key: str = "anon-test-key",
        bucket_limits: dict[str, int] | None = None,
    ) -> None:
        self.key = key
        self.anon_key = anon_key
        self.buckets = set(buckets)
        self.max_object_bytes = max_object_bytes
        self.bucket_limits: dict[str, int] = dict(bucket_limits or {})
        self.signed: dict[str, str] = {}  # token -> "bucket/path" it may download
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
        status, payload, content_type, extra = self._route(path, body, headers)
        if fault is not None:  # lose_response: the request took effect, the answer never arrives
            raise _Reset
        self._send(status, payload, content_type, extra)

    def _misbehave(self, fault: Fault) -> None:
        if fault.action == "reset":
            raise _Reset
        if fault.action == "stall":
            time.sleep(fault.stall_s)
            raise _Reset
        self._json(
            fault.status,
            _body(str(fault.status), "Internal", "injected server fault", "InternalError"),
        )

    def _role(self, headers: dict[str, str]) -> str:
        authorization = headers.get("authorization", "")
        token = authorization[7:] if authorization.lower().startswith("bearer ") else None
        if token == self.app.key:
            return SERVICE
        if token == self.app.anon_key:
            return ANON
        return INVALID

    def _route(self, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        role = self._role(headers)
        if path.startswith(PREFIX + "bucket/") and self.command == "GET":
            return self._get_bucket(path[len(PREFIX + "bucket/") :], role)
        if not path.startswith(PREFIX + "object/"):
            return _unknown_route(self.command, path)
        rest = path[len(PREFIX + "object/") :]
        if rest.startswith("sign/") and self.command == "GET":
            return self._signed_download(rest[len("sign/") :])
        if role == INVALID and self.command != "GET":
            return _error(UNAUTHORIZED)  # writes, list, delete, sign: the JWT is verified
        if rest.startswith("list/") and self.command == "POST":
            return self._list(rest[len("list/") :], body, role)
        if rest.startswith("sign/") and self.command == "POST":
            return self._sign(rest[len("sign/") :], body, role)
        if rest.startswith("info/") and self.command == "GET":
            bucket, _, name = rest[len("info/") :].partition("/")
            return self._read(bucket, name, role, info=True)
        bucket, _, name = rest.partition("/")
        if self.command == "GET":
            return self._read(bucket, name, role, info=False)
        if self.command == "DELETE" and not name:
            return self._delete(bucket, body, role)
        if self.command in ("POST", "PUT") and name:
            return self._upload(bucket, name, body, headers, role)
        return _unknown_route(self.command, path)

    def _get_bucket(self, bucket: str, role: str) -> Answer:
        if role == INVALID:
            return _error(UNAUTHORIZED)
        if role == ANON or bucket not in self.app.buckets:
            return _error(BUCKET_NOT_FOUND)  # buckets' row-level security hides it from anon
        record = {
            "id": bucket,
            "name": bucket,
            "owner": "",
            "public": False,
            "type": "STANDARD",
            "file_size_limit": self.app.bucket_limits.get(bucket),
            "allowed_mime_types": None,
            "created_at": "2026-01-01T00:00:00.000Z",
            "updated_at": "2026-01-01T00:00:00.000Z",
        }
        return _json_answer(record)

    def _list(self, bucket: str, body: bytes, role: str) -> Answer:
        if role == ANON or bucket not in self.app.buckets:
            return _json_answer([])  # a missing bucket lists as empty, like a hidden one
        return _json_answer(self.app.list_rows(bucket, json.loads(body or b"{}")))

    def _read(self, bucket: str, name: str, role: str, *, info: bool) -> Answer:
        # Download and info routes take a bad, expired or missing token as anonymous.
        if role == INVALID or bucket not in self.app.buckets:
            return _error(BUCKET_NOT_FOUND)
        with self.app.lock:
            obj = self.app.objects.get(f"{bucket}/{name}")
        if obj is None or role == ANON:
            return _error(NOT_FOUND)
        if info:
            return _json_answer(
                {
                    "name": name,
                    "bucket_id": bucket,
                    "size": len(obj.data),
                    "content_type": obj.content_type,
                    "cache_control": obj.cache_control,
                }
            )
        return 200, obj.data, obj.content_type, {"Cache-Control": obj.cache_control}

    def _sign(self, rest: str, body: bytes, role: str) -> Answer:
        bucket, _, name = rest.partition("/")
        request = json.loads(body or b"{}")
        visible = role == SERVICE and bucket in self.app.buckets
        if name:  # one path: missing is an error answer
            if not visible or f"{bucket}/{name}" not in self.app.objects:
                return _error(NOT_FOUND)
            return _json_answer({"signedURL": self._signed_url(bucket, name)})
        rows = []
        for path in request.get("paths", []):
            if visible and f"{bucket}/{path}" in self.app.objects:
                rows.append(
                    {"error": None, "path": path, "signedURL": self._signed_url(bucket, path)}
                )
            else:
                rows.append({"error": SIGN_MISSING, "path": path, "signedURL": None})
        return _json_answer(rows)

    def _signed_url(self, bucket: str, name: str) -> str:
        token = uuid.uuid4().hex
        with self.app.lock:
            self.app.signed[token] = f"{bucket}/{name}"
        return f"/object/sign/{bucket}/{name}?token={token}"

    def _signed_download(self, rest: str) -> Answer:
        token = dict(
            part.split("=", 1) for part in urlsplit(self.path).query.split("&") if "=" in part
        ).get("token")
        with self.app.lock:
            key = self.app.signed.get(token or "")
            obj = self.app.objects.get(rest) if key == rest else None
        if obj is None:
            return _error(_body("400", "InvalidJWT", "invalid signature", "InvalidJWT"))
        return 200, obj.data, obj.content_type, {"Cache-Control": obj.cache_control}

    def _upload(
        self, bucket: str, name: str, body: bytes, headers: dict[str, str], role: str
    ) -> Answer:
        if role == ANON:
            return _error(ROW_LEVEL_SECURITY)
        if bucket not in self.app.buckets:
            return _error(BUCKET_NOT_FOUND)
        data, content_type, cache_control = _file_part(body, headers)
        limits = [self.app.max_object_bytes, self.app.bucket_limits.get(bucket)]
        if len(data) > min(limit for limit in limits if limit is not None):
            if self.app.faults.gateway_413:
                body_413 = b"<html><body>413 Request Entity Too Large</body></html>"
                return 413, body_413, "text/html", {}
            return _error(TOO_LARGE)
        key = f"{bucket}/{name}"
        with self.app.lock:
            exists = key in self.app.objects
            if self.command == "POST" and exists and headers.get("x-upsert") != "true":
                return _error(DUPLICATE)
            # PUT replaces, and creates a missing object too (measured on the real server).
            self.app.objects[key] = StoredObject(data, content_type, cache_control=cache_control)
        return _json_answer({"Key": key, "Id": str(uuid.uuid4())})

    def _delete(self, bucket: str, body: bytes, role: str) -> Answer:
        prefixes = json.loads(body or b"{}").get("prefixes", [])
        if len(prefixes) > 1000:
            return _error(_body("400", "InvalidRequest", "too many prefixes", "InvalidRequest"))
        removed = []
        if role == SERVICE:  # anon sees no rows to delete
            with self.app.lock:
                for name in prefixes:
                    if self.app.objects.pop(f"{bucket}/{name}", None) is not None:
                        removed.append({"name": name, "bucket_id": bucket})
        return _json_answer(removed)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(
        self, status: int, payload: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
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


Answer = tuple[int, bytes, str, dict[str, str]]


def _error(payload: dict[str, Any]) -> Answer:
    """Storage's object and bucket errors: HTTP 400, the real status in the body's statusCode."""
    return 400, json.dumps(payload).encode(), "application/json", {}


def _json_answer(payload: Any) -> Answer:
    return 200, json.dumps(payload).encode(), "application/json", {}


def _unknown_route(method: str, path: str) -> Answer:
    body = {"statusCode": 404, "error": "Not Found", "message": f"Route {method}:{path} not found"}
    return 404, json.dumps(body).encode(), "application/json", {}


def _file_part(body: bytes, headers: dict[str, str]) -> tuple[bytes, str, str]:
    """The upload's bytes, content type and the Cache-Control storage will keep and serve.

    Multipart (storage3): the `file` part, and `max-age=<cacheControl field>`, or "no-cache"
    when the field is empty or absent (storage's uploader). Binary: the body and its headers.
    """
    content_type = headers.get("content-type", "")
    if "multipart/form-data" not in content_type:
        return (
            body,
            content_type or "application/octet-stream",
            headers.get("cache-control", "no-cache"),
        )
    boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
    data, part_type, cache_time = b"", "application/octet-stream", ""
    for part in _parts(body, boundary):
        head, _, value = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            data, part_type = value, _part_content_type(head)
        elif b'name="cacheControl"' in head:
            cache_time = value.decode()
    return data, part_type, f"max-age={cache_time}" if cache_time else "no-cache"


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
