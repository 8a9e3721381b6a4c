"""Orchestration ceiling: the build-index flow with a zero-cost embedder vs writing its shards raw.

    python -m bench.flow_ceiling [--products N] [--kinds color,structure,combined] [--batch-size N]
                                 [--no-raw] [--fleet-batch N] [--fleet-in-flight N]

Three shapes of the same flow, one after the other in one process (one JSON object):
- the top-level keys: batches of `--batch-size` (4,096) products, one call per commit, beside the
  raw faiss write of the same shards (the figure this bench always reported);
- `fleet`: the fleet's call size (`--fleet-batch`, 256) with the default deployment's calls in
  flight (`--fleet-in-flight`, 20 = modal_workers/app.py MAX_CONTAINERS 10 x
  INPUTS_PER_CONTAINER 2) and the default commit size (FAISS_BUILDER_COMMIT_SIZE unset: in flight
  x call size = 5,120 products per chunk): the orchestrator's ceiling in front of that fleet
  (goal >= 5,000 products/s on 2 cores);
- `per_call_commit`: the same calls committed one by one (commit size = call size), the shape the
  flow had before chunks (Prefect's cost paid per call), on at most 20,000 products.

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
import os
import tempfile
import threading
import time
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
    """An EmbedBackend with no fetch, decode or model: the orchestration alone is measured.

    Calls compute their vectors one at a time (a lock): a remote fleet computes elsewhere and the
    orchestrator's call threads only wait for answers. Twenty threads computing at once under
    the GIL cost ~1.6x the CPU of two (measured here), a cost the real flow does not pay.
    """

    def __init__(self, dim: int = DIM) -> None:
        self.dim = dim
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        dims = {"color": self.dim, "structure": self.dim, "combined": 2 * self.dim}
        return {"embedder": "bench-zero-cost", "model": "id-derived-unit-vectors", "dims": dims}

    def embed(self, refs: Sequence[Any], kinds: Sequence[str], limits: Any) -> Any:
        from modal_workers.types import EmbedOutput

        ids = [ref.id for ref in refs]
        with self._lock:
            vectors = kind_vectors(ids, kinds, self.dim)
        return EmbedOutput(ids=ids, vectors=vectors, failures=[])


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


#: The default deployment's calls in flight: modal_workers/app.py MAX_CONTAINERS (10) x
#: INPUTS_PER_CONTAINER (2), what ModalEmbedClient.calls_in_flight() answers for it.
FLEET_IN_FLIGHT = 20
FLEET_BATCH = 256
#: Goal of the fleet shape (issue 17): products/s on 2 cores.
FLEET_GOAL = 5_000
PER_CALL_PRODUCTS = 20_000


#: update-ann trains an approximate index once a kind passes FAISS_BUILDER_ANN_MIN_VECTORS
#: (100,000): a one-off step after the commits (bench.ann measures it), kept out of these rates.
NO_ANN = {"FAISS_BUILDER_ANN_MIN_VECTORS": str(10**12)}


def without_ann() -> None:
    """This process's builds stop before training an approximate index."""
    os.environ.update(NO_ANN)


def run_flow(
    catalog: Path,
    store: Path,
    kinds: Sequence[str],
    batch_size: int,
    *,
    commit_size: int | None = None,
    max_in_flight: int | None = None,
) -> tuple[float, dict[str, Any]]:
    """Seconds of one build_index call, and its summary."""
    from flows.build_index import build_index

    backend = register_zero_cost_backend()
    with timer() as elapsed:
        summary = build_index(
            kinds=list(kinds),  # type: ignore[arg-type,call-overload]
            batch_size=batch_size,
            commit_size=commit_size,
            max_in_flight=max_in_flight,
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


def run_shape(
    root: Path,
    name: str,
    products: int,
    kinds: Sequence[str],
    batch_size: int,
    *,
    commit_size: int | None = None,
    max_in_flight: int | None = None,
) -> dict[str, Any]:
    """One build of `products` in this shape: its rate, calls, commits and cost per commit; and
    its steady rate, once what nothing overlaps is taken off (flow start, lease, finish and the
    last chunk's write: a build of one chunk at the same shape, best of 2)."""
    shape = {"commit_size": commit_size, "max_in_flight": max_in_flight}
    catalog = write_catalog(root / f"{name}.csv", products)
    cpu = time.process_time()
    flow_s, summary = run_flow(catalog, root / name, kinds, batch_size, **shape)
    cpu_s = time.process_time() - cpu
    one = write_catalog(root / f"{name}-one.csv", int(summary["commit_size"]))
    fixed_s = min(
        run_flow(one, root / f"{name}-one-{i}", kinds, batch_size, **shape)[0] for i in range(2)
    )
    vectors = sum(summary["vectors_added"].values())
    return {
        "products": products,
        "batch_size": batch_size,
        "calls_in_flight": summary["calls_in_flight"],
        "commit_size": summary["commit_size"],
        "calls": int(summary["batches"]),
        "commits": int(summary["commits"]),
        "flow_s": round(flow_s, 3),
        "flow_inner_s": summary["elapsed_s"],
        "vectors_written": vectors,
        "flow_vectors_per_s": round(vectors / flow_s),
        "flow_products_per_s": round(products / flow_s),
        "flow_ms_per_commit": round(1000 * flow_s / max(1, int(summary["commits"])), 1),
        "fixed_s": round(fixed_s, 3),
        "steady_products_per_s": round(products / max(flow_s - fixed_s, 0.1 * flow_s)),
        # This process only: the Prefect server answers in its own process.
        "cpu_s": round(cpu_s, 2),
        "products_per_cpu_s": round(products / cpu_s),
    }


def measure(
    products: int,
    kinds: Sequence[str],
    batch_size: int,
    raw: bool,
    *,
    fleet_batch: int = FLEET_BATCH,
    fleet_in_flight: int = FLEET_IN_FLIGHT,
    shapes: bool = True,
) -> dict[str, Any]:
    quiet_prefect()
    without_ann()
    with tempfile.TemporaryDirectory(prefix="bench-flow-") as tmp:
        root = Path(tmp)
        # Warm-up run: starts the ephemeral Prefect server (seconds, once per process).
        warm_s, _ = run_flow(write_catalog(root / "warm.csv", 10), root / "warm", kinds, 10)
        large = run_shape(root, "large", products, kinds, batch_size, commit_size=batch_size)
        raw_s = raw_write_seconds(root / "raw", products, kinds, DIM) if raw else None
        if shapes:
            fleet = run_shape(
                root, "fleet", products, kinds, fleet_batch, max_in_flight=fleet_in_flight
            )
            per_call = run_shape(
                root,
                "per-call",
                min(products, PER_CALL_PRODUCTS),
                kinds,
                fleet_batch,
                commit_size=fleet_batch,
                max_in_flight=fleet_in_flight,
            )
    vectors, flow_s, batches = large["vectors_written"], large["flow_s"], large["commits"]
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
        "flow_s": flow_s,
        "flow_inner_s": large["flow_inner_s"],
        "vectors_written": vectors,
        "flow_vectors_per_s": large["flow_vectors_per_s"],
        "flow_vectors_per_s_per_kind": round(vectors / flow_s / len(kinds)),
        "flow_products_per_s": large["flow_products_per_s"],
    }
    if raw_s is not None:
        report |= {
            "raw_write_s": round(raw_s, 3),
            "raw_vectors_per_s": round(vectors / raw_s),
            "flow_over_raw_time": round(flow_s / raw_s, 2),
            "flow_overhead_ms_per_batch": round(1000 * (flow_s - raw_s) / max(1, batches), 1),
        }
    if shapes:
        report |= {
            "fleet": fleet,
            "per_call_commit": per_call,
            "fleet_goal_products_per_s": FLEET_GOAL,
            "fleet_goal_met": fleet["flow_products_per_s"] >= FLEET_GOAL,
            "fleet_over_per_call_commit": round(
                fleet["flow_products_per_s"] / per_call["flow_products_per_s"], 2
            ),
        }
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
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
    if "fleet" in r:
        fleet, per_call = r["fleet"], r["per_call_commit"]
        line += (
            f" | fleet shape (calls of {fleet['batch_size']}, {fleet['calls_in_flight']} in flight, "
            f"commit {fleet['commit_size']:,}): {fleet['flow_products_per_s']:,} products/s "
            f"({fleet['flow_ms_per_commit']} ms per commit, steady {fleet['steady_products_per_s']:,}/s"
            f"; goal >= {r['fleet_goal_products_per_s']:,}"
            f": {'met' if r['fleet_goal_met'] else 'NOT met'}); committed call by call: "
            f"{per_call['flow_products_per_s']:,} products/s ({per_call['flow_ms_per_commit']} ms per "
            f"commit) = {r['fleet_over_per_call_commit']}x slower"
        )
    return line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--no-raw", action="store_true", help="skip the raw faiss comparison")
    parser.add_argument("--fleet-batch", type=int, default=FLEET_BATCH, help="the fleet's call")
    parser.add_argument("--fleet-in-flight", type=int, default=FLEET_IN_FLIGHT)
    parser.add_argument("--no-shapes", action="store_true", help="only the --batch-size shape")
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    report = measure(
        args.products,
        kinds,
        args.batch_size,
        raw=not args.no_raw,
        fleet_batch=args.fleet_batch,
        fleet_in_flight=args.fleet_in_flight,
        shapes=not args.no_shapes,
    )
    emit(report, summary_line(report))


if __name__ == "__main__":
    main()
