"""Read-only questions to a store: search it, report its status. No Prefect, no CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from application.backends import LocalBackend
from application.connect import fetch_limits, open_catalog, open_storage
from application.errors import UsageError
from application.settings import Settings


def search_store(
    settings: Settings,
    *,
    kind: str,
    k: int,
    image: str | None,
    product_id: str | None,
    text: str | None = None,
    exact: bool = False,
) -> dict[str, Any]:
    """Top-k neighbours of an indexed product (its stored vector), a query image or a text.

    A kind with a serving approximate index (sharding.ann) is searched through it unless
    `exact`; the result's `method` says which (`ivf` or `exact`). Such a kind's vectors stay on disk
    (application.searcher.load_kind): `exact` streams its shards one at a time."""
    from application.searcher import load_kind
    from sharding.ann import load_ann
    from sharding.state import require_progress

    storage = open_storage(settings)
    progress = require_progress(storage)
    if kind not in progress.kinds:
        built = ", ".join(progress.kinds) or "none"
        raise UsageError(f"--kind {kind}: this store has no {kind} index (built: {built})")
    index = load_kind(storage, progress, kind, cache_dir=_cache_dir(settings))
    if product_id is not None:
        query_id = _as_indexed_id(product_id, index.ids)
        vector, query = _stored_vector(index, query_id), f"product {query_id!r}"
    elif text is not None:
        vector, query = _embed_text(settings, progress, kind, text), repr(text)
    else:
        assert image is not None
        vector, query = _embed_query(settings, progress, kind, image), image
    ann = None if exact or not index.ntotal else load_ann(storage, index.progress, kind)
    if ann is not None:
        scores, rows = ann.search(index.vectors, vector.reshape(1, -1), min(k, index.ntotal))
        pairs = [
            (index.ids[r], float(s)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0
        ]
    else:
        pairs = [(h.id, float(h.score)) for h in index.search(vector.reshape(1, -1), k)[0]]
    brands = _brands(settings, [pid for pid, _ in pairs])
    return {
        "kind": kind,
        "query": query,
        "embedder": f"{progress.embedder} ({progress.model})",
        "method": "exact" if ann is None else "ivf",
        "hits": [{"id": pid, "score": score, "brand": brands.get(pid)} for pid, score in pairs],
    }


def store_status(
    settings: Settings, *, include_failures: bool, with_catalog: bool = False
) -> dict[str, Any]:
    """The committed state of the store, read from progress.json.

    `with_catalog`: also count, per kind, the catalog rows that sort at or below the cursor but
    were never indexed (a resumed build cannot reach them; application.catalog.coverage).
    """
    from application.catalog.coverage import unindexed_below_cursor, unreachable_message
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
        # Approximate indexes (sharding.ann): type, nlist, nprobe, recall_at_10, vectors, ...
        "ann": {kind: ann_status(state) for kind, state in progress.ann.items()},
        "failed_count": progress.failures.total,
    }
    failures = list_failures(storage, progress) if include_failures or with_catalog else []
    if include_failures:
        result["failures"] = [
            {"id": f.id, "reason": f.reason, "message": f.message, "kinds": f.kinds}
            for f in failures
        ]
    if with_catalog:
        catalog = open_catalog(settings)
        counts = unindexed_below_cursor(catalog, progress, failures, list(progress.kinds))
        result["catalog"] = catalog.describe()
        result["unindexed_below_cursor"] = counts
        result["warnings"] = [m for m in [unreachable_message(counts)] if m]
    return result


def ann_status(state: Any) -> dict[str, Any]:
    from sharding.ann import status

    return status(state)


def _kind_status(kp: Any) -> dict[str, Any]:
    return {
        "vectors": kp.total_vectors,
        # Format 4: slots of replaced or deleted products are dead; readers skip them.
        "live": kp.live_vectors,
        "dead": kp.dead,
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


def _embed_text(settings: Settings, progress: Any, kind: str, text: str) -> Any:
    """Embed a text with the text tower of the model the index was built with (CLIP)."""
    from application.searcher import check_text_kind, text_query_vector
    from modal_workers.embedder import NoTextTower, embed_text

    check_text_kind(kind)  # before loading a model
    if not text.strip():
        raise UsageError("--text is empty")
    backend = LocalBackend(progress.embedder, progress.model or None, device=settings.embed.device)
    try:
        vector = embed_text(backend.embedder, [text])[0]
    except NoTextTower as exc:
        raise UsageError(f"--text: {exc}") from None
    return text_query_vector(vector, kind)


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
