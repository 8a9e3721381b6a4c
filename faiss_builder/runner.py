"""Runs the build-index flow in this process, with a progress bar fed by its events.

The flow needs a Prefect API. With PREFECT_API_URL set, that server must answer first; without
it, the CLI starts a temporary Prefect server itself, as a child that dies with the CLI even
when the CLI is SIGKILLed (Linux: PR_SET_PDEATHSIG), instead of Prefect's own ephemeral server,
which outlives a killed parent.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from application.settings import Kind, Settings

#: Seconds the temporary server may take to answer when PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
#: is unset. Prefect's own 20 s failed 6 builds in 10 on 2 busy cores (load 7-10).
STARTUP_TIMEOUT_S = 90
STARTUP_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
#: Seconds a configured PREFECT_API_URL may take to answer /health.
API_CHECK_TIMEOUT_S = 10.0

# Run as the temporary server's process: ask the kernel to SIGKILL us when the parent (the CLI)
# dies, check it did not die already, then become uvicorn. The death signal survives exec.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != parent:
    sys.exit(0)
os.execv(sys.executable, [sys.executable, "-m", "uvicorn", *sys.argv[2:]])
"""


class PrefectUnavailable(RuntimeError):
    """No Prefect API to run the flow on; the message names the setting to change."""


def run_build(settings: Settings, *, show_progress: bool) -> dict[str, Any]:
    """Run the build-index flow in this process, on PREFECT_API_URL or a temporary server.

    The store and catalog are opened once first, so a wrong path, file or key is refused in
    about a second, before any Prefect server is started or asked.
    """
    from application.session import preflight

    preflight(settings)
    with prefect_api():
        return _run_flow(settings, show_progress=show_progress)


def _run_flow(settings: Settings, *, show_progress: bool) -> dict[str, Any]:
    from flows.build_index import build_index
    from tasks import progress_events

    embed, catalog, fetch = settings.embed, settings.catalog, settings.fetch
    with _ProgressBar(show_progress) as listener:
        unsubscribe = progress_events.subscribe(listener)
        try:
            return build_index(
                kinds=[Kind(kind) for kind in embed.kinds],
                max_images=embed.max_images,
                batch_size=embed.batch_size,
                backend=embed.backend,
                embedder=embed.embedder,
                model=embed.model,
                max_in_flight=embed.max_in_flight,
                store=settings.store.store,
                catalog=catalog.catalog,
                allow_private_urls=fetch.allow_private_urls,
                lease_wait_s=settings.store.lease_wait_s,
                retry_failed=embed.retry_failed,
                reconcile=catalog.reconcile,
            )
        finally:
            unsubscribe()


class _ProgressBar:
    """A rich progress bar on stderr fed by the flow's progress events (or nothing when hidden).

    The bar appears only once the build starts embedding, so a run refused up front prints
    nothing but its one-line error.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Any:
        return self._on_event

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._progress is not None:
            # A failing build ends with its one-line error alone: the bar leaves no last frame
            # (which a non-terminal stderr would otherwise get printed before the error).
            self._progress.live.transient = exc_type is not None
            self._progress.stop()

    def _on_event(self, event: str, data: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if event == "start":
            self._start(data.get("total"))
        elif event == "batch" and self._task is not None:
            self._progress.update(
                self._task,
                completed=data["done"],
                description=f"embedding ({data['failed']} failed)",
            )

    def _start(self, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._progress.start()
        self._task = self._progress.add_task("embedding", total=total)


@contextmanager
def prefect_api() -> Iterator[str]:
    """The API URL the flow runs on, checked to answer; PrefectUnavailable (one line) if not."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        _check_answers(configured)
        yield configured
        return
    with _temporary_server() as url, temporary_settings(updates={PREFECT_API_URL: url}):
        os.environ["PREFECT_API_URL"] = url  # for anything that reads the environment itself
        try:
            yield url
        finally:
            _drain_prefect_clients()  # its logs and events reach the server before it stops
            os.environ.pop("PREFECT_API_URL", None)


def _drain_prefect_clients() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # best effort: the run's outcome is already known
            worker.drain_all(timeout=5)


def _check_answers(api_url: str) -> None:
    import httpx

    shown = _without_credentials(api_url)
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=API_CHECK_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise PrefectUnavailable(
            f"Prefect API at PREFECT_API_URL={shown} is unreachable ({type(exc).__name__}); "
            "start that server, or unset PREFECT_API_URL to use a temporary one"
        ) from None
    if response.status_code != 200:
        raise PrefectUnavailable(
            f"Prefect API at PREFECT_API_URL={shown} answered /health with HTTP "
            f"{response.status_code}; check the URL (it ends in /api)"
        )


@contextmanager
def _temporary_server() -> Iterator[str]:
    """A Prefect server on a free 127.0.0.1 port, our child; stopped on exit, killed with us."""
    timeout_s = _startup_timeout_s()
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _DIE_WITH_PARENT,
            str(os.getpid()),
            "--app-dir",
            _prefect_parent_dir(),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ],
        env={
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            "PREFECT_API_URL": "",
        },
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(url, process, timeout_s)
        yield url
    finally:
        _stop(process)


def _startup_timeout_s() -> int:
    raw = os.environ.get(STARTUP_TIMEOUT_VARIABLE, "").strip()
    if not raw:
        return STARTUP_TIMEOUT_S
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise PrefectUnavailable(
            f"{STARTUP_TIMEOUT_VARIABLE}={raw!r} is not a positive whole number of seconds"
        )
    return value


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise PrefectUnavailable(
                    f"the temporary Prefect server exited with code {process.returncode} before "
                    "answering; run `prefect server start` and set PREFECT_API_URL to see why"
                )
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise PrefectUnavailable(
        f"the temporary Prefect server did not answer within {timeout_s:g} s "
        f"({STARTUP_TIMEOUT_VARIABLE}); raise it on a busy machine, or set PREFECT_API_URL "
        "to a running server (prefect server start)"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prefect_parent_dir() -> str:
    import prefect

    return str(prefect.__module_path__.parent)


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit(parts._replace(netloc=netloc))
    return url
