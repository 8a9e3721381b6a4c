"""Run the service with uvicorn (what `faiss-builder serve` calls)."""

from __future__ import annotations

from collections.abc import Callable

from application.settings import Settings
from service.settings import ServiceSettings


def run_service(
    settings: Settings, service: ServiceSettings, *, echo: Callable[[str], None] = print
) -> None:
    """Serve until interrupted: the store's last commit now, each new one as builds commit."""
    import uvicorn

    from service.app import create_app

    app = create_app(settings, service)
    echo(
        f"faiss-builder: serving {settings.store.store} on http://{service.host}:{service.port} "
        f"(page /, API /docs; reloads every {service.poll_s:g} s)"
    )
    uvicorn.run(app, host=service.host, port=service.port, log_level="warning", access_log=False)
