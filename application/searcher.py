"""One commit of a store loaded in memory and searchable: by id, by a query vector, by brand.

A kind with a serving approximate index (sharding.ann: IVF lists over the sealed shards plus an
exact scan of the rest) is searched through it; other kinds by the exact flat scan. Such a kind
is loaded with sharding.loader.map_index: its sealed shards' vectors stay on disk (the store's
own files for a local store, the cache folder's copies for a remote one) and only the re-rank's
candidates are read per query (pread), so memory holds the lists' codes and the ids, not
the vectors; `exact=True` then streams the shards one at a time.

The HTTP service (service/) keeps one `LoadedCommit` per commit it serves; the CLI's
`search` (application.queries) shares the query-vector helpers. Read-only: nothing here writes.

Brands: the store counts vectors per brand but does not keep each vector's brand, so a commit
reads the catalog once at load (one keyset pass, `page` after `page`) and keeps, per kind, the
positions of each brand's vectors. A brand-filtered search scans exactly those positions, so it
returns k of that brand's products whenever k exist (it is not a filter applied after the top k).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from application.errors import UsageError

if TYPE_CHECKING:
    from application.catalog.base import Catalog
    from sharding.loader import ShardedIndex
    from sharding.progress import Progress
    from sharding.storage import Storage

#: Catalog rows per keyset page while reading brands and image URLs at load.
CATALOG_PAGE = 5000
#: Loads retried when a build commits between two kinds (each kind must come from one commit).
LOAD_ATTEMPTS = 5
#: The kinds a text query can search: its vector lives in the colour view's space.
TEXT_KINDS = ("color", "combined")


@dataclass(frozen=True)
class Result:
    id: Any
    score: float
    brand: str | None
    image_url: str | None


@dataclass
class CatalogView:
    """What the service shows of each product: brand and image URL, read once from the catalog."""

    source: str | None
    products: dict[Any, tuple[str | None, str]] = field(default_factory=dict)
    #: Folder a local catalog's relative image paths start from (None: not a local file).
    local_root: str | None = None

    @property
    def available(self) -> bool:
        return self.source is not None


@dataclass
class LoadedCommit:
    """Every served kind of one commit, plus each vector's brand, in memory."""

    progress: Progress
    indexes: dict[str, ShardedIndex]
    catalog: CatalogView
    #: kind -> brand -> positions (int64, ascending) of that brand's vectors in the kind's array.
    brand_positions: dict[str, dict[str, np.ndarray]]
    #: kind -> its serving approximate index (sharding.ann.LoadedAnn), for kinds that have one.
    approximate: dict[str, Any] = field(default_factory=dict)

    @property
    def commit_seq(self) -> int:
        return self.progress.commit_seq

    def live_vectors(self) -> dict[str, int]:
        return {kind: index.ntotal for kind, index in self.indexes.items()}

    def index(self, kind: str) -> ShardedIndex:
        try:
            return self.indexes[kind]
        except KeyError:
            built = ", ".join(self.indexes) or "none"
            raise UsageError(
                f"kind {kind!r}: this store has no such index (built: {built})"
            ) from None

    def stored_vector(self, kind: str, product_id: Any) -> np.ndarray:
        index = self.index(kind)
        query_id = as_indexed_id(product_id, index.ids)
        try:
            return index.vector(query_id)
        except KeyError:
            raise UsageError(f"id {product_id!r} is not in the {kind} index") from None

    def search(
        self,
        kind: str,
        vector: np.ndarray,
        k: int,
        brand: str | None = None,
        *,
        exact: bool = False,
    ) -> list[Result]:
        """The k nearest products (inner product); with `brand`, the k nearest of that brand.
        `exact`: the flat scan even where an approximate index serves."""
        index = self.index(kind)
        query = np.ascontiguousarray(np.atleast_2d(vector), dtype=np.float32)
        if query.shape[1] != index.dim:
            raise ValueError(f"queries have dimension {query.shape[1]}, index {index.dim}")
        ann = None if exact else self.approximate.get(kind)
        if ann is not None and k >= 1 and index.ntotal:
            rows = None if brand is None else self._brand_rows(index, brand)
            if rows is not None and len(rows) == 0:
                return []
            scores, found = ann.search(index.vectors, query, min(k, index.ntotal), rows=rows)
            hits = [
                (index.ids[int(r)], float(score))
                for score, r in zip(scores[0], found[0], strict=True)
                if r >= 0
            ]
        elif brand is None:
            hits = [(hit.id, hit.score) for hit in index.search(query, k)[0]]
        else:
            hits = self._search_brand(index, query, k, brand)
        return [self._result(pid, score) for pid, score in hits]

    def _brand_rows(self, index: ShardedIndex, brand: str) -> np.ndarray:
        if not self.catalog.available:
            raise UsageError(
                "brand filter: the service has no catalog to read brands from "
                "(set --catalog / FAISS_BUILDER_CATALOG)"
            )
        positions = self.brand_positions[index.kind].get(brand)
        return np.zeros(0, np.int64) if positions is None else positions

    def _search_brand(
        self, index: ShardedIndex, query: np.ndarray, k: int, brand: str
    ) -> list[tuple[Any, float]]:
        import faiss

        positions = self._brand_rows(index, brand)
        if len(positions) == 0 or k < 1:
            return []
        subset = index.vectors[positions]  # gathered per query: cost ~ the brand's size
        scores, found = faiss.knn(
            query, subset, min(k, len(positions)), metric=faiss.METRIC_INNER_PRODUCT
        )
        return [
            (index.ids[int(positions[p])], float(s))
            for s, p in zip(scores[0], found[0], strict=True)
            if p >= 0
        ]

    def _result(self, product_id: Any, score: float) -> Result:
        brand, url = self.catalog.products.get(product_id, (None, None))
        return Result(id=product_id, score=float(score), brand=brand, image_url=url)

    def brands(self) -> list[str]:
        names = {brand for per_kind in self.brand_positions.values() for brand in per_kind}
        return sorted(names)


def load_commit(
    storage: Storage,
    *,
    catalog: Catalog | None,
    kinds: Iterable[str] | None = None,
    cache_dir: Path | None = None,
    mapped: bool | None = None,
) -> LoadedCommit:
    """Load the store's last commit: every kind (or `kinds`), all from that one commit.

    A build may commit while the kinds load one after another; the load then starts again
    (LOAD_ATTEMPTS times) so that a LoadedCommit never mixes two commits.
    `mapped`: leave sealed shards' vectors on disk (sharding.loader.map_index) for every kind
    (True), none (False), or the kinds with a serving approximate index (None, the default).
    """
    from sharding.errors import StateError
    from sharding.state import require_progress

    wanted = None if kinds is None else list(kinds)
    for _ in range(LOAD_ATTEMPTS):
        progress = require_progress(storage)
        served = [k for k in progress.kinds if wanted is None or k in wanted]
        indexes = {
            kind: load_kind(storage, progress, kind, cache_dir=cache_dir, mapped=mapped)
            for kind in served
        }
        if all(index.progress.commit_seq == progress.commit_seq for index in indexes.values()):
            if indexes:
                progress = next(iter(indexes.values())).progress
            break
    else:
        raise StateError(
            f"{storage.describe()}: commits kept changing during {LOAD_ATTEMPTS} loads"
        )
    for index in indexes.values():
        if index.ids:
            index.vector(index.ids[0])  # builds its id -> position map now, not on a query
    view = read_catalog_view(catalog)
    return LoadedCommit(
        progress=progress,
        indexes=indexes,
        approximate=_approximate(storage, indexes),
        catalog=view,
        brand_positions={
            kind: _positions_by_brand(index.ids, view) for kind, index in indexes.items()
        },
    )


def load_kind(
    storage: Storage,
    progress: Progress,
    kind: str,
    *,
    cache_dir: Path | None = None,
    mapped: bool | None = None,
) -> ShardedIndex:
    """One kind's index: its sealed shards left on disk (map_index) where `mapped`, or by default where an
    approximate index serves (its search reads only candidates); in memory otherwise."""
    from sharding.loader import load_index, map_index

    if mapped is None:
        state = progress.ann.get(kind)
        mapped = state is not None and state.serving
    load = map_index if mapped else load_index
    return load(storage, kind, cache_dir=cache_dir)


def _approximate(storage: Storage, indexes: dict[str, ShardedIndex]) -> dict[str, Any]:
    """The serving approximate index of each kind that has one (sharding.ann), same commit."""
    from sharding.ann import load_ann

    loaded = {kind: load_ann(storage, index.progress, kind) for kind, index in indexes.items()}
    return {kind: ann for kind, ann in loaded.items() if ann is not None}


def read_catalog_view(catalog: Catalog | None) -> CatalogView:
    """Brand and image URL of every catalog product, in one keyset pass."""
    if catalog is None:
        return CatalogView(source=None)
    view = CatalogView(source=catalog.describe(), local_root=getattr(catalog, "local_root", None))
    after = None
    while True:
        page = catalog.page(after, CATALOG_PAGE)
        if not page:
            return view
        for product in page:
            view.products[product.id] = (product.brand, product.image_url)
        after = page[-1].id


def _positions_by_brand(ids: list[Any], view: CatalogView) -> dict[str, np.ndarray]:
    if not view.available:
        return {}
    products = view.products
    codes: dict[str, int] = {}
    column = np.fromiter(
        (
            codes.setdefault(brand, len(codes)) if (brand := products.get(pid, (None,))[0]) else -1
            for pid in ids
        ),
        dtype=np.int64,
        count=len(ids),
    )
    order = np.argsort(column, kind="stable")
    sorted_codes = column[order]
    names = list(codes)
    result: dict[str, np.ndarray] = {}
    for code, name in enumerate(names):
        start, stop = np.searchsorted(sorted_codes, [code, code + 1])
        result[name] = np.ascontiguousarray(order[start:stop])
    return result


def text_query_vector(text_vector: np.ndarray, kind: str) -> np.ndarray:
    """The query vector for a text in `kind`: `color` takes the text vector itself; `combined`
    takes [t, t]/sqrt(2) (unit norm like the stored [color, structure]/sqrt(2), so a score is the
    mean of the text's cosine with the colour view and with the structure view). `structure` is
    refused: that view is a colour-free sketch, and a text names colours and materials."""
    check_text_kind(kind)
    if kind == "combined":
        return np.concatenate([text_vector, text_vector], axis=-1) / math.sqrt(2.0)
    return text_vector


def check_text_kind(kind: str) -> None:
    """UsageError unless a text query can search `kind` (TEXT_KINDS)."""
    if kind not in TEXT_KINDS:
        raise UsageError(f"text queries search the {' or '.join(TEXT_KINDS)} kind, not {kind!r}")


def as_indexed_id(value: Any, ids: list[Any]) -> Any:
    """Ids arrive as text (the command line) or JSON; match the index's own id type."""
    if ids and isinstance(ids[0], int) and not isinstance(value, int):
        try:
            return int(str(value))
        except ValueError:
            raise UsageError(f"id {value!r}: this index has integer product ids") from None
    if ids and isinstance(ids[0], str) and not isinstance(value, str):
        return str(value)
    return value
