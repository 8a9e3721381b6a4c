"""The local Supabase Storage server with slow uploads, in-flight tracking and a commit history."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

from tests.support.supabase_storage_server import SupabaseStorageServer, _Handler


class SlowStorageServer(SupabaseStorageServer):
    """Uploads wait `upload_delay_s` before they apply, so a client can be killed mid-upload.

    When the client is gone after the wait, `drop_orphans` decides whether the upload is dropped
    (the body never fully arrived) or applied anyway (it did; only the answer is lost).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.upload_delay_s = 0.0
        self.drop_orphans = True
        self.in_flight: dict[int, str] = {}
        self.commits: list[tuple[str, int]] = []  # (run_id, commit_seq) of each progress.json
        self.cursors: dict[int, int] = {}  # commit_seq -> smallest cursor over its kinds
        self.orphans: list[tuple[str, bool]] = []  # (path, applied) of uploads whose client died
        self._ids = iter(range(1 << 30))

    def start(self) -> SlowStorageServer:
        handler = type("Handler", (_SlowHandler,), {"app": self})
        self._server = _QuietServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def read(self, bucket: str, name: str) -> bytes | None:
        with self.lock:
            stored = self.objects.get(f"{bucket}/{name}")
        return None if stored is None else stored.data

    def record_commit(self, data: bytes | None) -> None:
        if data is None:
            return
        progress = json.loads(data)
        entry = (str(progress["run_id"]), int(progress["commit_seq"]))
        cursors = [kind["cursor"] for kind in progress["kinds"].values()]
        with self.lock:
            self.cursors[entry[1]] = min(int(c or 0) for c in cursors) if cursors else 0
            if not self.commits or self.commits[-1] != entry:
                self.commits.append(entry)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients killed mid-request are the point of these tests


class _SlowHandler(_Handler):
    app: SlowStorageServer

    def _dispatch(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        upload = self.command in ("POST", "PUT") and "/object/list/" not in path
        if upload and self.app.upload_delay_s:
            ticket = next(self.app._ids)
            with self.app.lock:
                self.app.in_flight[ticket] = path
            try:
                time.sleep(self.app.upload_delay_s)
            finally:
                with self.app.lock:
                    self.app.in_flight.pop(ticket, None)
            if _client_gone(self.connection):
                self.app.orphans.append((path, not self.app.drop_orphans))
                if self.app.drop_orphans:
                    return
        try:
            super()._dispatch(path, body, headers)
        finally:  # a lost response (reset after the write) still recorded its commit
            if upload and path.endswith("/progress.json"):
                bucket, _, name = path.split("/object/", 1)[1].partition("/")
                self.app.record_commit(self.app.read(bucket, name))


def _client_gone(connection: socket.socket) -> bool:
    """True when the peer closed the connection (a readable socket with nothing to read)."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
