"""The alignment check: structural store checks plus a re-embedded sample that must find itself."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from application.backends import EmbedBackend
from application.catalog.base import Catalog, ProductId
from application.settings import Settings

if TYPE_CHECKING:
    from modal_workers.types import FetchLimits
    from sharding.storage import Storage

#: Re-embedding the same bytes with the same model gives cosine ≈ 1.0 on one machine; fp16 on a GPU
#: against fp32 on a CPU moves it by well under 0.01. 0.95 leaves that margin while still failing
#: when an id points at another product's vector.
DEFAULT_SELF_SIMILARITY = 0.95
#: Identical images (duplicates in a catalog) tie at the top; a tie within this margin counts as found.
TIE_MARGIN = 1e-4


@dataclass
class SampleResult:
    kind: str
    id: ProductId
    ok: bool
    score: float | None
    top_id: ProductId | None
    note: str = ""


@dataclass
class SampleReport:
    threshold: float
    results: list[SampleResult] = field(default_factory=list)
    unverifiable: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every re-embedded product found itself, and at least one could be re-embedded."""
        return bool(self.results) and all(result.ok for result in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "threshold": self.threshold,
            "checked": len(self.results),
            "passed": sum(result.ok for result in self.results),
            "results": [asdict(result) for result in self.results],
            "unverifiable": self.unverifiable,
        }


def pick_sample(ids: Sequence[ProductId], size: int, seed: int | None) -> list[ProductId]:
    """A reproducible random sample of indexed ids (all of them when there are fewer)."""
    population = list(ids)
    return random.Random(seed).sample(population, min(size, len(population)))


def verify_sample(
    storage: Storage,
    catalog: Catalog,
    backend: EmbedBackend,
    kinds: Sequence[str],
    *,
    sample: int,
    limits: FetchLimits,
    threshold: float = DEFAULT_SELF_SIMILARITY,
    seed: int | None = None,
) -> SampleReport:
    """Re-fetch and re-embed `sample` indexed products; each must be its own nearest neighbour."""
    from modal_workers.types import ImageRef
    from sharding.scan import kind_ids, scan_search
    from sharding.state import require_progress

    report = SampleReport(threshold=threshold)
    progress = require_progress(storage)
    # Ids only (the id maps): the vectors are scanned one shard at a time below, so the check
    # never holds a whole kind in memory to re-embed a few products.
    indexed = {kind: set(kind_ids(storage, progress, kind)) for kind in kinds}
    # Sample across kinds: per-kind runs may have indexed a product in one kind and not another.
    ids = pick_sample(sorted(set().union(*indexed.values()), key=str), sample, seed)
    products = catalog.get(ids)
    report.unverifiable += [
        {"id": missing, "reason": "not in catalog"}
        for missing in sorted(set(ids) - {p.id for p in products}, key=str)
    ]
    refs = [ImageRef(id=product.id, url=product.image_url) for product in products]
    output = backend.embed(refs, list(kinds), limits) if refs else None
    if output is None:
        return report
    report.unverifiable += [{"id": f.id, "reason": f.reason} for f in output.failures]
    for kind in kinds:
        rows = [i for i, product_id in enumerate(output.ids) if product_id in indexed[kind]]
        hits = scan_search(storage, progress, kind, output.vectors[kind][rows], 5) if rows else []
        report.results += [
            _judge(kind, output.ids[i], row, threshold) for i, row in zip(rows, hits, strict=True)
        ]
    return report


def _judge(kind: str, product_id: ProductId, hits: Sequence[Any], threshold: float) -> SampleResult:
    if not hits:
        return SampleResult(kind, product_id, False, None, None, "index returned no neighbours")
    top = hits[0].score
    own = next((hit for hit in hits if hit.id == product_id), None)
    if own is None:
        return SampleResult(kind, product_id, False, None, hits[0].id, "not among top neighbours")
    found = own.score >= top - TIE_MARGIN and own.score >= threshold
    note = "" if found else f"self-similarity {own.score:.4f} (top {top:.4f})"
    return SampleResult(kind, product_id, found, round(own.score, 6), hits[0].id, note)


def check_sample(
    settings: Settings,
    storage: Storage,
    kinds: Sequence[str],
    sample: int,
    threshold: float = DEFAULT_SELF_SIMILARITY,
    seed: int | None = None,
) -> SampleReport:
    """Re-embed a sample with the embedder that built the index (from progress.json)."""
    from application.connect import fetch_limits, open_backend, open_catalog
    from sharding.state import require_progress

    catalog = open_catalog(settings)
    progress = require_progress(storage)
    return verify_sample(
        storage,
        catalog,
        open_backend(settings, progress.embedder, progress.model or None),
        kinds,
        sample=sample,
        limits=fetch_limits(settings, catalog.local_root),
        threshold=threshold,
        seed=seed,
    )


def store_kinds(storage: Storage) -> list[str]:
    """The kinds progress.json has committed, in canonical order."""
    from sharding.state import require_progress

    present = require_progress(storage).kinds
    from modal_workers.types import KINDS

    return [kind for kind in KINDS if kind in present]


def run_alignment_check(
    settings: Settings,
    *,
    kinds: list[str] | None,
    sample: int,
    threshold: float = DEFAULT_SELF_SIMILARITY,
    seed: int | None = None,
    on_store_report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole check as the CLI runs it: {ok, kinds, store, sample, text}.

    `on_store_report` gets the structural report as soon as it is ready, before the sample
    (which loads the embedder and re-fetches images) starts.
    """
    from application.connect import open_storage
    from sharding.checks import check_store
    from sharding.errors import StateError

    storage = open_storage(settings)
    try:
        kinds = kinds or store_kinds(storage)
    except StateError:
        kinds = []  # an unreadable progress.json: check_store reports it as a problem
    report = check_store(storage, kinds or None)
    if on_store_report is not None:
        on_store_report(report.to_markdown())
    sample_report = None
    if report.ok and sample > 0:
        sample_report = check_sample(settings, storage, kinds, sample, threshold, seed)
    ok = report.ok and (sample_report is None or sample_report.ok)
    return {
        "ok": ok,
        "kinds": kinds,
        "store": report.to_dict(),
        "sample": sample_report.to_dict() if sample_report else None,
        "sample_text": render_sample(sample_report) if sample_report else None,
        "text": render_check(report, sample_report),
    }


def render_check(report: Any, sample_report: SampleReport | None) -> str:
    """Plain text for the terminal and the Prefect markdown artifact."""
    verdict = "PASS" if report.ok and (sample_report is None or sample_report.ok) else "FAIL"
    parts = [f"alignment check: {verdict}", report.to_markdown()]
    if sample_report is not None:
        parts.append(render_sample(sample_report))
    return "\n\n".join(parts)


def render_sample(sample: SampleReport) -> str:
    passed = sum(result.ok for result in sample.results)
    lines = [
        f"re-embedded sample: {passed} of {len(sample.results)} (product, kind) pairs found "
        f"themselves as nearest neighbour with similarity >= {sample.threshold}",
    ]
    lines += [f"- {r.kind} {r.id!r}: {r.note or 'not found'}" for r in sample.results if not r.ok]
    lines += [f"- unverifiable {u['id']!r}: {u['reason']}" for u in sample.unverifiable]
    return "\n".join(lines)
