"""`make bench`: every benchmark in its own subprocess, its JSON line and summary, then one table.

    python -m bench [--quick] [--only NAME[,NAME...]]

All figures are ratios measured side by side within one run (these machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
Row = tuple[str, str, str, bool | None]


@dataclass(frozen=True)
class Bench:
    name: str
    full: list[str]
    quick: list[str] | None  # None: not part of the quick run
    rows: Callable[[dict[str, Any]], list[Row]]


def _flow_rows(r: dict[str, Any]) -> list[Row]:
    measured = (
        f"{r['flow_vectors_per_s']:,} vectors/s ({r['products']:,} products x {len(r['kinds'])} "
        f"kinds); raw faiss write {r['raw_vectors_per_s']:,}/s; "
        f"{r['flow_overhead_ms_per_batch']} ms/batch overhead"
    )
    return [
        (
            "1 orchestration ceiling",
            measured,
            ">= 20,000 vectors/s",
            r["flow_vectors_per_s"] >= 20_000,
        )
    ]


def _embed_rows(r: dict[str, Any]) -> list[Row]:
    if "skipped" in r:
        return [
            (
                f"2 end-to-end / raw forward ({r['precision']})",
                f"skipped: {r['skipped']}",
                "reported",
                None,
            )
        ]
    measured = (
        f"{r['ratio_per_forward_b_over_a']:.2f} per forward, {r['ratio_per_image_b_over_a']:.2f} per "
        f"image ({r['b_pipeline_images_per_s']} img/s vs raw {r['a_raw_forward_images_per_s']} img/s, "
        f"{r['precision']})"
    )
    serial = r["serial_cpu_ratio_per_forward"]
    measured += f"; {serial:.2f} if preparation and forward took turns on the CPU"
    label = f"2 end-to-end / raw forward ({r['precision']})"
    if r["precision"] != "fp32":  # the goal is judged at the default precision (CPU: fp32)
        return [(label, measured, "reported", None)]
    return [(label, measured, ">= 0.90", r["ratio_per_forward_b_over_a"] >= 0.90)]


def _checkpoint_rows(r: dict[str, Any]) -> list[Row]:
    large = r["at_large"]["committed_vectors"]
    measured = f"bytes {r['ratio']:.3f}x, seconds {r['seconds_ratio']:.2f}x (10k vs {large:,})"
    return [
        (
            "3 checkpoint cost growth",
            measured,
            "<= 1.1x",
            max(r["ratio"], r["seconds_ratio"]) <= 1.1,
        )
    ]


def _memory_rows(r: dict[str, Any]) -> list[Row]:
    small, large = r["vectors"]
    rows: list[Row] = []
    for shape in r["shapes"]:
        measured = (
            f"{shape['ratio']:.2f}x ({shape['small']['peak_rss_mb']:.0f} -> "
            f"{shape['large']['peak_rss_mb']:.0f} MB)"
        )
        label = f"4 peak RSS {small:,} vs {large:,} vectors, {'+'.join(shape['kinds'])}"
        rows.append((label, measured, "<= 1.2x", shape["ratio"] <= 1.2))
    return rows


def _load_rows(r: dict[str, Any]) -> list[Row]:
    shape = f"{r['vectors']:,} x {r['dim']}-d, {r['shards']:,} shards"
    load = (
        f"{r['load_ratio']:.2f}x ({r['load_s']:.2f} s vs {r['raw_read_s']:.2f} s reading the bytes "
        f"into memory; {r['load_over_read_and_drop']:.2f}x a read-and-drop; {shape})"
    )
    search = f"{r['search_ratio']:.2f}x ({r['search_sharded_ms']} vs {r['search_merged_ms']} ms)"
    return [
        ("5 index load / raw read into memory", load, "<= 1.5x", r["load_ratio"] <= 1.5),
        ("5 search sharded / one flat index", search, "<= 1.1x", r["search_ratio"] <= 1.1),
    ]


def _gpu_rows(r: dict[str, Any]) -> list[Row]:
    if r["gpu"] is None:
        return [("6 GPU embed rate", f"skipped: {r['reason']}", "reported", None)]
    measured = (
        f"{r['gpu']}: {r['pipeline_images_per_s_3_kinds']} img/s with decode, "
        f"{r['forward_images_per_s']} img/s forward; utilisation {r.get('gpu_utilisation_mean')}%"
    )
    return [("6 GPU embed rate", measured, "reported", None)]


def _feed_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for row in r["rows"]:
        measured = (
            f"{row['images_per_s']} img/s = {row['of_limit']:.2f} of {row['limit']} "
            f"({row['bound_by']}-bound: 1 core prepares {row['prep_one_core_images_per_s']} img/s, "
            f"GPU {row['gpu_images_per_s']}); GPU busy {row['gpu_busy']:.0%}"
        )
        label = f"7 simulated A10G fed by {row['cores']} core(s)"
        rows.append((label, measured, ">= 0.90 of limit", row["of_limit"] >= 0.9))
    return rows


def _fleet_rows(r: dict[str, Any]) -> list[Row]:
    ceiling = f"ceiling {r['ceiling_products_per_s']:,}/s"
    rows: list[Row] = []
    for row in r["rows"]:
        measured = (
            f"{row['products_per_s']:,} products/s = {row['of_expected']:.2f} of "
            f"{row['expected_per_s']:,} ({row['bound_by']}-bound, {ceiling})"
        )
        label = f"8 fleet of {row['containers']} x {r['container_rate']:g} img/s"
        rows.append((label, measured, ">= 0.90", row["of_expected"] >= 0.9))
    return rows


def _ann_rows(r: dict[str, Any]) -> list[Row]:
    measured = (
        f"recall@10 {r['heldout_recall_at_10']} (committed {r['committed_recall_at_10']}), "
        f"single-query p99 {r['ann_p99_ms']} ms vs exact {r['exact_p99_ms']} ms ({r['type']}, "
        f"nlist {r['nlist']}, nprobe {r['nprobe']}, {r['vectors']:,} x {r['dim']}-d); build "
        f"{r['build_s']} s, one-shard update {r['update_s']} s / {r['update_bytes_written']:,} B; "
        f"{r['ann_over_flat_bytes']}x flat bytes; peak RSS {r['peak_rss_mb']:.0f} MiB"
    )
    return [("10 approximate index", measured, "recall >= 0.95, p99 <= 5 ms", r["goal_met"])]


def _service_rows(r: dict[str, Any]) -> list[Row]:
    measured = (
        f"{r['p50_ratio']:.2f}x (HTTP p50 {r['http_p50_ms']} ms, p99 {r['http_p99_ms']} ms vs "
        f"in-process {r['inprocess_p50_ms']} / {r['inprocess_p99_ms']} ms; {r['vectors']:,} x "
        f"{r['dim']}-d flat); {r['clients']} clients {r['throughput_rps']} req/s"
    )
    return [("9 service query by id, HTTP / in-process p50", measured, "<= 1.3x", r["goal_met"])]


def _sync_rows(r: dict[str, Any]) -> list[Row]:
    small, large = r["sizes"]
    rows: list[Row] = []
    if "no_change_ratio" in r:
        at = r["no_change"][str(large)]
        measured = (
            f"{r['no_change_ratio']:.2f}x ({large:,} vs {small:,} products: "
            f"{at['catalog_requests']} catalog request, {at['catalog_rows']} rows, "
            f"{at['bytes_written']:,} B written, {r['no_change_shards_written']} shards touched)"
        )
        ok = r["no_change_ratio"] <= 1.2 and not r["no_change_shards_written"]
        rows.append(("11 catalog sync, nothing changed", measured, "<= 1.2x", ok))
    if "changes_ratio" in r:
        c = r["changes"]
        measured = (
            f"bytes {r['changes_ratio']:.2f}x ({c['sync']['bytes_written']:,} vs "
            f"{c['append']['bytes_written']:,} B), seconds {r['changes_seconds_ratio']:.2f}x "
            f"({c['changed']:,} changed + {c['deleted']:,} deleted of {large:,})"
        )
        ok = r["changes_ratio"] <= 1.3
        rows.append(("11 sync 1% changed + 0.1% deleted / append", measured, "<= 1.3x", ok))
    if "dead_search_ratio" in r:
        d = r["dead"]
        measured = (
            f"{r['dead_search_ratio']:.2f}x ({d['search_s_100_queries_dead_median'] * 1000:.1f} "
            f"vs {d['search_s_100_queries_compacted_median'] * 1000:.1f} ms, {d['live']:,} live)"
        )
        ok = r["dead_search_ratio"] <= 1.2
        rows.append(("11 search 10% dead / compacted", measured, "<= 1.2x", ok))
    return rows


def _compact_rows(r: dict[str, Any]) -> list[Row]:
    measured = (
        f"{r['compact_s']} s, peak RSS {r['compact_peak_rss_mb']:.0f} MiB vs a plain faiss "
        f"rewrite of the same rows, fsynced, {r['plain_fsync_rewrite_s']} s "
        f"({r['seconds_ratio']}x; page cache only {r['plain_rewrite_s']} s), "
        f"{r['plain_peak_rss_mb']:.0f} MiB ({r['vectors']:,} x {r['dim']}-d, {r['dead']:,} dead)"
    )
    return [("11 compaction / plain rewrite", measured, "reported", None)]


# `make bench` is sized to finish in about 10 minutes on 2 cores: the sync and compaction benches
# run at 200k products there; their 1M figures (README) come from `python -m bench.sync_cost` and
# `python -m bench.compact` run on their own, and the 10M approximate index from `make bench-scale`.
BENCHES = [
    Bench("flow_ceiling", [], ["--products", "5000"], _flow_rows),
    Bench("memory_growth", [], ["--quick"], _memory_rows),
    Bench("embed_throughput", [], ["--quick"], _embed_rows),
    Bench("embed_throughput", ["--precision", "bf16"], None, _embed_rows),
    Bench("checkpoint_bytes", [], ["--quick"], _checkpoint_rows),
    Bench("index_load", [], ["--vectors", "20000", "--dim", "128"], _load_rows),
    Bench("gpu_embed", [], ["--quick"], _gpu_rows),
    Bench("gpu_feed", [], ["--quick"], _feed_rows),
    Bench("fleet", [], ["--quick"], _fleet_rows),
    Bench("service_latency", [], ["--quick"], _service_rows),
    Bench("ann", [], ["--quick"], _ann_rows),
    Bench("sync_cost", ["--sizes", "10000,200000"], ["--quick"], _sync_rows),
    Bench("compact", ["--vectors", "200000"], ["--quick"], _compact_rows),
]


def run(bench: Bench, quick: bool) -> dict[str, Any]:
    """Run one bench module, pass its output through, return its JSON object."""
    args = (bench.quick or []) if quick else bench.full
    command = [sys.executable, "-m", f"bench.{bench.name}", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"bench.{bench.name} failed (exit {done.returncode})")
    for line in lines:
        print(line, flush=True)
    return dict(json.loads(next(line for line in lines if line.startswith("{"))))


def table(rows: list[Row]) -> str:
    lines = ["| goal | measured | target | met |", "|---|---|---|---|"]
    marks = {True: "yes", False: "**no**", None: "-"}
    lines += [
        f"| {goal} | {measured} | {target} | {marks[ok]} |" for goal, measured, target, ok in rows
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", default="", help="comma-separated bench names")
    args = parser.parse_args(argv)
    wanted = {name for name in args.only.split(",") if name}
    unknown = wanted - {b.name for b in BENCHES}
    if unknown:
        raise SystemExit(f"unknown bench(es): {', '.join(sorted(unknown))}")
    started, rows = time.perf_counter(), []
    for bench in BENCHES:
        if (not wanted or bench.name in wanted) and not (args.quick and bench.quick is None):
            rows += bench.rows(run(bench, args.quick))
    print()
    print(table(rows))
    print(f"\nmake bench{' (quick)' if args.quick else ''}: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
