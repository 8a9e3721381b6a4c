"""Search service latency: one query by id over HTTP vs the same search in-process; throughput.

    python -m bench.service_latency [--vectors N] [--dim D] [--queries Q] [--quick]

A store of N random unit vectors (default 100,000 x 512-d, ids 1..N, 10 brands) is written
through the library's IndexWriter into a temp folder. The service (service.app over uvicorn,
as `faiss-builder serve` runs it) is started in a subprocess on 127.0.0.1; this process loads
the same commit with application.searcher.load_commit. Then, interleaved query by query on the
same random ids (top 10, flat exact search): POST /search {"id"} with one keep-alive client vs
LoadedCommit.search(kind, stored_vector(id)) called directly. Reported: p50/p99 of each and the
ratio of the p50s (goal <= 1.3x), then requests/s with 8 concurrent HTTP clients for a few
seconds (each its own connection), and the same with a brand filter. Last, a build commits
10,000 more vectors: seconds from that commit to /health naming it (the poll is 2 s, so up to
2 s of it is waiting for the poll), and the server's peak RSS (VmHWM) across the swap vs its
resident set while serving before it (two commits at once at most: about 2x the vectors).
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import emit
from sharding import BuildConfig, EmbeddedBatch, IndexWriter
from sharding.codec import ProductId
from sharding.local_store import LocalStore

GOAL = 1.3
K = 10
BRANDS = 10
BATCH = 10_000
CLIENTS = 8


def build_store(root: Path, catalog: Path, vectors: int, dim: int) -> None:
    config = BuildConfig("bench", "random-unit-vectors", {"color": dim}, shard_max_vectors=10_000)
    writer = IndexWriter.open(LocalStore(root), config, run_id="bench-service-latency")
    rng = np.random.default_rng(0)
    with catalog.open("w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(["id", "image_url", "brand"])
        for start in range(0, vectors, BATCH):
            n = min(BATCH, vectors - start)
            block = rng.standard_normal((n, dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            ids: list[ProductId] = list(range(start + 1, start + n + 1))
            brands: list[str | None] = [f"brand-{pid % BRANDS}" for pid in ids]
            rows.writerows(
                [pid, f"https://img.example/{pid}.jpg", b]
                for pid, b in zip(ids, brands, strict=True)
            )
            writer.add_batch(EmbeddedBatch(ids, brands, {"color": block}, last_id=ids[-1]))
            writer.commit()
    writer.finish()


def serve(store: str, catalog: str, port: int) -> None:
    """The subprocess: the service as `faiss-builder serve` builds it."""
    import uvicorn

    from application.settings import load_settings
    from service.app import create_app
    from service.settings import ServiceSettings

    settings = load_settings(store=store, catalog=catalog)
    overrides: dict[str, Any] = {"port": port, "poll_s": 2.0}
    app = create_app(settings, ServiceSettings(**overrides))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def throughput(url: str, seconds: float, body: dict[str, Any], ids: np.ndarray) -> float:
    import httpx

    counts = [0] * CLIENTS
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    def client(slot: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            i = slot
            while time.perf_counter() < stop:
                response = http.post("/search", json={**body, "id": int(ids[i % len(ids)])})
                if response.status_code != 200:
                    errors.append(response.text)
                counts[slot] += 1
                i += CLIENTS

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, first: {errors[0][:200]}")
    return sum(counts) / (time.perf_counter() - started)


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_reload(url: str, root: Path, pid: int, vectors: int, dim: int) -> dict[str, Any]:
    """A build commits BATCH more vectors: seconds from that commit to /health naming it, and
    the server's peak RSS across the swap vs its resident set while serving before it."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as http:
        before = http.get("/health").json()["commit"]
        steady_mb = _status_mb(pid, "VmRSS")
        config = BuildConfig(
            "bench", "random-unit-vectors", {"color": dim}, shard_max_vectors=10_000
        )
        writer = IndexWriter.open(LocalStore(root), config, run_id="bench-service-reload")
        block = np.random.default_rng(2).standard_normal((BATCH, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        ids: list[ProductId] = list(range(vectors + 1, vectors + BATCH + 1))
        writer.add_batch(EmbeddedBatch(ids, [None] * BATCH, {"color": block}, last_id=ids[-1]))
        writer.commit()
        committed = time.perf_counter()
        writer.finish()
        while http.get("/health").json()["commit"] == before:
            if time.perf_counter() - committed > 300:
                raise SystemExit("the new commit was not served in 300 s")
            time.sleep(0.01)
        reload_s = time.perf_counter() - committed
    peak_mb = _status_mb(pid, "VmHWM")
    return {
        "reload_s": round(reload_s, 2),
        "server_steady_rss_mb": round(steady_mb),
        "server_peak_rss_mb": round(peak_mb),
        "swap_peak_over_steady": round(peak_mb / steady_mb, 2),
    }


def measure(vectors: int, dim: int, queries: int, seconds: float) -> dict[str, Any]:
    import httpx

    from application.catalog.local import LocalCatalog
    from application.searcher import load_commit

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        root, catalog = Path(tmp) / "store", Path(tmp) / "catalog.csv"
        build_store(root, catalog, vectors, dim)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.service_latency",
                "--serve",
                str(root),
                str(catalog),
                str(port),
            ],
            env=env,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            commit = load_commit(LocalStore(root), catalog=LocalCatalog(catalog))
            ids = np.random.default_rng(1).integers(1, vectors + 1, size=queries)
            with httpx.Client(base_url=url, timeout=60) as http:
                deadline = time.monotonic() + 300
                while True:
                    try:
                        if http.get("/health").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("the service did not load the store in 300 s")
                    time.sleep(0.2)
                http_s, local_s = [], []
                for pid in [*ids[:5], *ids]:  # the first 5 warm both paths, then are measured again
                    started = time.perf_counter()
                    response = http.post("/search", json={"id": int(pid), "k": K})
                    http_s.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text
                    started = time.perf_counter()
                    local = commit.search("color", commit.stored_vector("color", int(pid)), K)
                    local_s.append(time.perf_counter() - started)
                    assert [hit["id"] for hit in response.json()["results"]] == [
                        r.id for r in local
                    ]
                http_s, local_s = http_s[5:], local_s[5:]
            rps = throughput(url, seconds, {"k": K}, ids)
            rps_brand = throughput(url, seconds, {"k": K, "brand": "brand-3"}, ids)
            reload = measure_reload(url, root, server.pid, vectors, dim)
        finally:
            server.terminate()
            server.wait(30)
    report: dict[str, Any] = {
        "bench": "service_latency",
        "vectors": vectors,
        "dim": dim,
        "queries": queries,
        "http_p50_ms": round(percentile(http_s, 50), 2),
        "http_p99_ms": round(percentile(http_s, 99), 2),
        "inprocess_p50_ms": round(percentile(local_s, 50), 2),
        "inprocess_p99_ms": round(percentile(local_s, 99), 2),
        "clients": CLIENTS,
        "throughput_rps": round(rps, 1),
        "throughput_brand_rps": round(rps_brand, 1),
        "cores": os.cpu_count(),
        **reload,
    }
    report["p50_ratio"] = round(report["http_p50_ms"] / report["inprocess_p50_ms"], 3)
    report["goal_met"] = report["p50_ratio"] <= GOAL
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true", help="20,000 x 128-d, 50 queries, 2 s")
    parser.add_argument(
        "--serve", nargs=3, metavar=("STORE", "CATALOG", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]))
        return
    if args.quick:
        args.vectors, args.dim, args.queries, args.seconds = 20_000, 128, 50, 2.0
    r = measure(args.vectors, args.dim, args.queries, args.seconds)
    emit(
        r,
        f"service by id at {r['vectors']:,} x {r['dim']}-d: HTTP p50 {r['http_p50_ms']} ms "
        f"(p99 {r['http_p99_ms']}) vs in-process {r['inprocess_p50_ms']} ms (p99 "
        f"{r['inprocess_p99_ms']}) = {r['p50_ratio']}x (goal <= {GOAL}x); {CLIENTS} clients "
        f"{r['throughput_rps']} req/s ({r['throughput_brand_rps']} with a brand filter); reload "
        f"{r['reload_s']} s after a commit, peak RSS {r['server_peak_rss_mb']} MB vs steady "
        f"{r['server_steady_rss_mb']} MB ({r['swap_peak_over_steady']}x)",
    )


if __name__ == "__main__":
    main()
