"""A Supabase Storage stand-in for signing tests: buckets, bulk signing and signed downloads.

Answers like supabase/storage: errors are HTTP 400 with a JSON body whose statusCode is a string;
`POST /object/sign/{bucket}` returns `[{error, path, signedURL}]` with signedURL relative to
/storage/v1 and a per-path error for missing objects; `GET /object/sign/{bucket}/{path}?token=`
serves the object to anyone holding the token, without an API key.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import jwt

MISSING = "Either the object does not exist or you do not have access to it"


class StorageStub:
    """Serves {url}/bucket/{id} and the sign endpoints for objects held in memory."""

    def __init__(self, jwt_secret: str, buckets: dict[str, dict[str, bytes]]) -> None:
        self.jwt_secret = jwt_secret
        self.buckets = buckets
        self.sign_requests: list[list[str]] = []
        handler = type("Handler", (_Handler,), {"stub": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def role(self, authorization: str | None) -> str | None:
        token = (authorization or "").removeprefix("Bearer ")
        try:
            return jwt.decode(token, self.jwt_secret, algorithms=["HS256"]).get("role")
        except jwt.PyJWTError:
            return None

    def sign(self, bucket: str, paths: list[str], expires_in: int) -> list[dict[str, Any]]:
        self.sign_requests.append(paths)
        return [self._sign_one(bucket, path, expires_in) for path in paths]

    def _sign_one(self, bucket: str, path: str, expires_in: int) -> dict[str, Any]:
        if path not in self.buckets[bucket]:
            return {"error": MISSING, "path": path, "signedURL": None}
        claims = {"url": f"{bucket}/{path}", "exp": int(time.time()) + expires_in}
        token = jwt.encode(claims, self.jwt_secret, algorithm="HS256")
        return {
            "error": None,
            "path": path,
            "signedURL": f"/object/sign/{bucket}/{quote(path)}?token={token}",
        }

    def download(self, bucket: str, path: str, token: str) -> bytes | None:
        try:
            claims = jwt.decode(token, self.jwt_secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            return None
        if claims.get("url") != f"{bucket}/{path}":
            return None
        return self.buckets.get(bucket, {}).get(path)


def _error(status: str, error: str, message: str) -> tuple[int, bytes]:
    return 400, json.dumps({"statusCode": status, "error": error, "message": message}).encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    stub: StorageStub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        segments = [unquote(s) for s in parts.path.strip("/").split("/")]
        if segments[:1] == ["bucket"] and len(segments) == 2:
            return self._send(*self._get_bucket(segments[1]))
        if segments[:2] == ["object", "sign"] and len(segments) >= 4:
            token = parse_qs(parts.query).get("token", [""])[0]
            body = self.stub.download(segments[2], "/".join(segments[3:]), token)
            if body is None:
                return self._send(*_error("400", "InvalidSignature", "The signature is invalid"))
            return self._send(200, body, "image/jpeg")
        self._send(*_error("404", "not_found", "Route not found"))

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        segments = self.path.strip("/").split("/")
        if segments[:2] != ["object", "sign"] or len(segments) != 3:
            return self._send(*_error("404", "not_found", "Route not found"))
        if self.stub.role(self.headers.get("Authorization")) != "service_role":
            return self._send(*_error("403", "Unauthorized", "invalid signature"))
        if segments[2] not in self.stub.buckets:
            return self._send(*_error("404", "Bucket not found", "Bucket not found"))
        signed = self.stub.sign(segments[2], body["paths"], int(body["expiresIn"]))
        self._send(200, json.dumps(signed).encode())

    def _get_bucket(self, bucket: str) -> tuple[int, bytes]:
        if self.stub.role(self.headers.get("Authorization")) != "service_role":
            return _error("403", "Unauthorized", "invalid signature")
        if bucket not in self.stub.buckets:
            return _error("404", "Bucket not found", "Bucket not found")
        now = "2024-01-01T00:00:00Z"
        record = {"id": bucket, "name": bucket, "owner": "", "public": False}
        record |= {"created_at": now, "updated_at": now}
        record |= {"file_size_limit": None, "allowed_mime_types": None}
        return 200, json.dumps(record).encode()

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
