"""What each CLI command does; search, status and check call the library directly (no Prefect)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from faiss_builder.connect import (
    LocalBackend,
    fetch_limits,
    open_catalog,
    open_storage,
)
from faiss_builder.errors import UsageError
from faiss_builder.settings import Settings


def run_build(settings: Settings, *, show_progress: bool) -> dict[str, Any]:
    """Run the build-index flow in this process (ephemeral Prefect server unless PREFECT_API_URL)."""
    from flows.build_index import build_index
    from tasks import progress_events

    embed, catalog, fetch = settings.embed, settings.catalog, settings.fetch
    with _ProgressBar(show_progress) as listener:
        unsubscribe = progress_events.subscribe(listener)
        try:
            return build_index(
                kinds=list(embed.kinds),
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


def run_check(
    settings: Settings,
    *,
    sample: int,
    kinds: list[str] | None,
    on_store_report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Structural checks of each kind (default: all in the store), then a re-embedded sample."""
    from faiss_builder.verify import run_alignment_check

    return run_alignment_check(
        settings, kinds=kinds, sample=sample, on_store_report=on_store_report
    )


def run_search(
    settings: Settings, *, kind: str, k: int, image: str | None, product_id: str | None
) -> dict[str, Any]:
    """Top-k neighbours of an indexed product (its stored vector) or of a query image."""
    from sharding.loader import load_index
    from sharding.state import require_progress

    storage = open_storage(settings)
    progress = require_progress(storage)
    if kind not in progress.kinds:
        built = ", ".join(progress.kinds) or "none"
        raise UsageError(f"--kind {kind}: this store has no {kind} index (built: {built})")
    index = load_index(storage, kind, cache_dir=_cache_dir(settings))
    if product_id is not None:
        query_id = _as_indexed_id(product_id, index.ids)
        vector, query = _stored_vector(index, query_id), f"product {query_id!r}"
    else:
        assert image is not None
        vector, query = _embed_query(settings, progress, kind, image), image
    hits = index.search(vector.reshape(1, -1), k)[0]
    brands = _brands(settings, [hit.id for hit in hits])
    return {
        "kind": kind,
        "query": query,
        "embedder": f"{progress.embedder} ({progress.model})",
        "hits": [{"id": h.id, "score": float(h.score), "brand": brands.get(h.id)} for h in hits],
    }


def run_status(settings: Settings, *, include_failures: bool) -> dict[str, Any]:
    """The committed state of the store, read from progress.json."""
    from sharding.state import list_failures, read_progress

    storage = open_storage(settings)
    progress = read_progress(storage)
    if progress is None:
        return {"store": storage.describe(), "initialised": False}
    result: dict[str, Any] = {
        "store": storage.describe(),
        "initialised": True,
        "embedder": progress.embedder,
        "model": progress.model,
        "commit_seq": progress.commit_seq,
        "run_id": progress.run_id,
        "written_at": progress.written_at.isoformat(),
        "shard_max_vectors": progress.shard_max_vectors,
        "shard_max_bytes": progress.shard_max_bytes,
        "kinds": {kind: _kind_status(kp) for kind, kp in progress.kinds.items()},
        "failed_count": progress.failures.total,
    }
    if include_failures:
        result["failures"] = [
            {"id": f.id, "reason": f.reason, "message": f.message, "kinds": f.kinds}
            for f in list_failures(storage, progress)
        ]
    return result


def run_doctor(settings: Settings) -> dict[str, Any]:
    """Connectivity and configuration checks that write nothing."""
    import os

    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

    from faiss_builder.doctor import run_checks

    api_key = PREFECT_API_KEY.value()
    checks = run_checks(
        _supabase_target(settings),
        backend=settings.embed.backend,
        prefect_api_url=PREFECT_API_URL.value() or None,
        prefect_api_key=SecretStr(api_key) if api_key else None,
        environ=os.environ,
        timeout_s=min(settings.supabase.timeout_s, 10.0),
    )
    checks.insert(0, _config_check(settings))
    return {
        "ok": all(check.ok for check in checks),
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
    }


def _supabase_target(settings: Settings) -> Any:
    """What doctor checks on Supabase: only when the catalog or the store lives there."""
    from faiss_builder.doctor import SupabaseTarget

    uses_table = settings.catalog.catalog == "supabase"
    uses_bucket = settings.store.store == "supabase"
    if not (uses_table or uses_bucket):
        return None
    catalog = settings.catalog
    buckets = [settings.supabase.bucket] if uses_bucket else []
    buckets += [catalog.image_bucket] if catalog.image_bucket else []
    return SupabaseTarget(
        url=settings.supabase.url,
        key=settings.supabase.key,
        table=catalog.catalog_table,
        id_column=catalog.catalog_id_column,
        url_column=catalog.catalog_url_column,
        brand_column=catalog.catalog_brand_column,
        buckets=buckets,
    )


def _config_check(settings: Settings) -> Any:
    """The local side: where the catalog and the store are, and whether they can be opened."""
    from faiss_builder.doctor import CheckResult

    try:
        catalog = open_catalog(settings).describe()
        store = open_storage(settings).describe()
    except Exception as exc:
        return CheckResult("configuration", False, " ".join(str(exc).split()))
    return CheckResult("configuration", True, f"{catalog} -> {store}")


def _kind_status(kp: Any) -> dict[str, Any]:
    return {
        "vectors": kp.total_vectors,
        "shards": kp.shard_count(),
        "dim": kp.dim,
        "cursor": kp.cursor,
        "brands": len(kp.vectors_per_brand),
    }


def _embed_query(settings: Settings, progress: Any, kind: str, image: str) -> Any:
    """Embed the query image with the embedder the index was built with."""
    from modal_workers.pipeline import embed_query_image
    from modal_workers.reasons import ImageRefused

    backend = LocalBackend(progress.embedder, progress.model or None, device=settings.embed.device)
    try:
        vectors = embed_query_image(image, [kind], backend.embedder, fetch_limits(settings, None))
    except ImageRefused as exc:
        raise UsageError(f"query image {image}: {exc.reason}: {exc.message}") from None
    return vectors[kind][0]


def _stored_vector(index: Any, product_id: Any) -> Any:
    try:
        return index.vector(product_id)
    except KeyError:
        raise UsageError(f"--id {product_id!r} is not in the {index.kind} index") from None


def _brands(settings: Settings, ids: list[Any]) -> dict[Any, str | None]:
    """Brands of the hits from the catalog, when a catalog is configured and readable."""
    try:
        return {product.id: product.brand for product in open_catalog(settings).get(ids)}
    except Exception:
        return {}


def _as_indexed_id(text: str, ids: list[Any]) -> Any:
    """Ids from the command line are text; match the index's own id type."""
    if ids and isinstance(ids[0], int):
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"--id {text!r}: this index has integer product ids") from None
    return text


def _cache_dir(settings: Settings) -> Path | None:
    return Path(settings.store.cache_dir) if settings.store.cache_dir else None


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
