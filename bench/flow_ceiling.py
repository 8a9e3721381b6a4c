"""Orchestration ceiling: the build-index flow with a zero-cost embedder vs writing its shards raw.

    python -m bench.flow_ceiling [--products N] [--kinds color,structure,combined] [--batch-size N]
                                 [--no-raw]

The flow is the real `build-index` flow (Prefect ephemeral server, local catalog CSV, local store);
only the embedding backend is replaced, inside this process, by ZeroCostBackend (deterministic unit
vectors derived from each product id: no fetch, no decode, no model), registered as the backend
`bench-zero-cost` with application.connect.register_backend and selected by the flow's `backend`
parameter. The raw side writes
the same shards (same sizes, same vectors) with faiss directly: IndexFlatIP add + serialize +
write the index file and its JSON id map, nothing else.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import emit, peak_rss_mb, quiet_prefect, timer
from modal_workers.types import KINDS

DIM = 512
SHARD = 1000


_TABLE_ROWS = 4093  # prime: (id % P, id // P % P) differs for every id below P**2 (16.7M)


@cache
def _tables(dim: int, view: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(sum(view.encode()))  # fixed per view, independent of the batch
    shape = (_TABLE_ROWS, dim)
    return rng.standard_normal(shape, np.float32), rng.standard_normal(shape, np.float32)


def id_vectors(ids: Sequence[int], dim: int, view: str) -> np.ndarray:
    """Deterministic L2-normalised vectors: row i depends only on ids[i] and the view.

    Two table look-ups and a normalisation (~10 ms per 4,096 x 512), so the embedder costs
    close to nothing next to the flow it feeds.
    """
    low, high = _tables(dim, view)
    keys = np.asarray(ids, dtype=np.int64)
    x = low[keys % _TABLE_ROWS] + 0.5 * high[(keys // _TABLE_ROWS) % _TABLE_ROWS]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def kind_vectors(ids: Sequence[int], kinds: Sequence[str], dim: int) -> dict[str, np.ndarray]:
    from modal_workers.types import views_for
    from modal_workers.views import assemble_kinds

    by_view = {view: id_vectors(ids, dim, view) for view in views_for(kinds)}
    return assemble_kinds(by_view, kinds)


class ZeroCostBackend:
    """An EmbedBackend with no fetch, decode or model: the orchestration alone is measured."""

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim

    def describe(self) -> dict[str, Any]:
        dims = {"color": self.dim, "structure": self.dim, "combined": 2 * self.dim}
        return {"embedder": "bench-zero-cost", "model": "id-derived-unit-vectors", "dims": dims}

    def embed(self, refs: Sequence[Any], kinds: Sequence[str], limits: Any) -> Any:
        from modal_workers.types import EmbedOutput

        ids = [ref.id for ref in refs]
        return EmbedOutput(ids=ids, vectors=kind_vectors(ids, kinds, self.dim), failures=[])


ZERO_COST_BACKEND = "bench-zero-cost"


def register_zero_cost_backend(dim: int = DIM) -> str:
    """Register ZeroCostBackend for `backend="bench-zero-cost"` in this process; return the name."""
    from application.backends import register_backend

    register_backend(ZERO_COST_BACKEND, lambda settings, embedder, model: ZeroCostBackend(dim))
    return ZERO_COST_BACKEND


def write_catalog(path: Path, products: int) -> Path:
    """A CSV catalog of `products` rows; the image URLs are never fetched."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image_url", "brand"])
        writer.writerows(
            (i, f"https://images.invalid/{i}.jpg", f"brand-{i % 50}")
            for i in range(1, products + 1)
        )
    return path


def run_flow(
    catalog: Path, store: Path, kinds: Sequence[str], batch_size: int
) -> tuple[float, dict[str, Any]]:
    """Seconds of one build_index call, and its summary."""
    from flows.build_index import build_index

    backend = register_zero_cost_backend()
    with timer() as elapsed:
        summary = build_index(
            kinds=list(kinds),  # type: ignore[arg-type,call-overload]
            batch_size=batch_size,
            store=str(store),
            catalog=str(catalog),
            backend=backend,
            embedder="clip",  # ZeroCostBackend ignores it; the flow validates the name only
        )
    return elapsed[0], summary


def raw_write_seconds(folder: Path, products: int, kinds: Sequence[str], dim: int) -> float:
    """Same shards with faiss directly: add + serialize + write index and id-map files."""
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    for start in range(1, products + 1, SHARD):
        ids = list(range(start, min(start + SHARD, products + 1)))
        vectors = kind_vectors(ids, kinds, dim)  # the embedder's work, not timed
        number = (start - 1) // SHARD + 1
        with timer() as t:
            for kind in kinds:
                index = faiss.IndexFlatIP(vectors[kind].shape[1])
                index.add(vectors[kind])
                data = faiss.serialize_index(index)
                (folder / f"clip_{kind}_shard_{number:05d}.index").write_bytes(data.tobytes())
                id_map = json.dumps(ids, separators=(",", ":")).encode()
                (folder / f"id_map_{kind}_shard_{number:05d}.json").write_bytes(id_map)
        seconds += t[0]
    return seconds


def measure(products: int, kinds: Sequence[str], batch_size: int, raw: bool) -> dict[str, Any]:
    quiet_prefect()
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        root = Path(tmp)
        # Warm-up run: starts the ephemeral Prefect server (seconds, once per process).
        warm_s, _ = run_flow(write_catalog(root / "warm.csv", 10), root / "warm", kinds, 10)
        catalog = write_catalog(root / "catalog.csv", products)
        flow_s, summary = run_flow(catalog, root / "store", kinds, batch_size)
        raw_s = raw_write_seconds(root / "raw", products, kinds, DIM) if raw else None
    vectors = sum(summary["vectors_added"].values())
    batches = int(summary["batches"])
    report: dict[str, Any] = {
        "bench": "flow_ceiling",
        "backend": "ZeroCostBackend (registered as backend bench-zero-cost)",
        "products": products,
        "kinds": list(kinds),
        "dims": {k: (2 * DIM if k == "combined" else DIM) for k in kinds},
        "batch_size": batch_size,
        "batches": batches,
        "shard_max_vectors": SHARD,
        "warmup_flow_s": round(warm_s, 2),
        "flow_s": round(flow_s, 3),
        "flow_inner_s": summary["elapsed_s"],
        "vectors_written": vectors,
        "flow_vectors_per_s": round(vectors / flow_s),
        "flow_vectors_per_s_per_kind": round(vectors / flow_s / len(kinds)),
        "flow_products_per_s": round(products / flow_s),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if raw_s is not None:
        report |= {
            "raw_write_s": round(raw_s, 3),
            "raw_vectors_per_s": round(vectors / raw_s),
            "flow_over_raw_time": round(flow_s / raw_s, 2),
            "flow_overhead_ms_per_batch": round(1000 * (flow_s - raw_s) / max(1, batches), 1),
        }
    return report


def summary_line(r: dict[str, Any]) -> str:
    line = (
        f"flow: {r['vectors_written']:,} vectors ({r['products']:,} products x "
        f"{len(r['kinds'])} kinds) in {r['flow_s']:.2f} s = {r['flow_vectors_per_s']:,} vectors/s "
        f"({r['flow_vectors_per_s_per_kind']:,}/s per kind, {r['flow_products_per_s']:,} products/s)"
    )
    if "raw_write_s" in r:
        line += (
            f"; raw faiss write {r['raw_write_s']:.2f} s = {r['raw_vectors_per_s']:,} vectors/s; "
            f"flow/raw {r['flow_over_raw_time']}x; overhead {r['flow_overhead_ms_per_batch']} ms/batch"
        )
    return line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--no-raw", action="store_true", help="skip the raw faiss comparison")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    report = measure(args.products, kinds, args.batch_size, raw=not args.no_raw)
    emit(report, summary_line(report))


if __name__ == "__main__":
    main()
