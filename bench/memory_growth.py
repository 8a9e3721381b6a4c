"""Memory growth: peak RSS of the build-index flow (zero-cost embedder) at 20k vs 200k vectors.

    python -m bench.memory_growth [--quick]

Each size runs `bench.flow_ceiling --no-raw --no-shapes` (the one shape of `--batch-size`, one call
per commit) in a fresh subprocess and reads its peak RSS (VmHWM),
which includes the fixed cost of Python, Prefect, faiss and numpy. Two shapes are measured: all
three kinds (the default build; vectors = 3 x products) and the color kind alone (vectors =
products), since the local catalog file is held in memory per product, not per vector. Batches
of 1,024: at 4,096 the 20k-vector build (two batches of three kinds) ends before its working set
of batches in flight is reached, and the ratio measures that instead of growth.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from bench._common import emit

GOAL = 1.2


def child_report(products: int, kinds: str, batch_size: int) -> dict[str, Any]:
    # --no-shapes: flow_ceiling's fleet shape (5,120-product chunks, 20 calls in flight) holds a
    # bounded working set that the smaller build never reaches; the ratio would measure that.
    command = [sys.executable, "-m", "bench.flow_ceiling", "--no-raw", "--no-shapes"]
    command += ["--products", str(products), "--kinds", kinds, "--batch-size", str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.splitlines()[0]))


def measure_shape(small_vectors: int, large_vectors: int, kinds: str, batch: int) -> dict[str, Any]:
    per_product = len(kinds.split(","))
    small = child_report(small_vectors // per_product, kinds, batch)
    large = child_report(large_vectors // per_product, kinds, batch)
    return {
        "kinds": kinds.split(","),
        "small": {k: small[k] for k in ("products", "vectors_written", "peak_rss_mb", "flow_s")},
        "large": {k: large[k] for k in ("products", "vectors_written", "peak_rss_mb", "flow_s")},
        "ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2k vs 20k vectors, one shape")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1024,
        help="products per batch; small enough that the smaller build reaches its steady state",
    )
    args = parser.parse_args(argv)
    small, large = (2_000, 20_000) if args.quick else (20_000, 200_000)
    shapes = ["color,structure,combined"] if args.quick else ["color,structure,combined", "color"]
    results = [measure_shape(small, large, kinds, args.batch_size) for kinds in shapes]
    worst = max(r["ratio"] for r in results)
    report = {
        "bench": "memory_growth",
        "backend": "ZeroCostBackend (registered as backend bench-zero-cost)",
        "vectors": [small, large],
        "batch_size": args.batch_size,
        "shapes": results,
        "ratio": worst,
        "goal": GOAL,
        "meets_goal": worst <= GOAL,
    }
    parts = [
        f"{'+'.join(r['kinds'])}: {r['small']['peak_rss_mb']:.0f} -> {r['large']['peak_rss_mb']:.0f} MB "
        f"({r['ratio']:.2f}x)"
        for r in results
    ]
    emit(report, f"peak RSS {small:,} vs {large:,} vectors: " + "; ".join(parts))


if __name__ == "__main__":
    main()
