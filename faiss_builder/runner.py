"""Runs the build-index flow in this process, with a progress bar fed by its events."""

from __future__ import annotations

from typing import Any

from application.settings import Kind, Settings


def run_build(settings: Settings, *, show_progress: bool) -> dict[str, Any]:
    """Run the build-index flow in this process (ephemeral Prefect server unless PREFECT_API_URL)."""
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

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
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
