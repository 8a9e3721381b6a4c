"""bench.service_latency runs and reports its figures (no timing goal asserted: shared cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_service_latency_bench_prints_its_json_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.service_latency", "--vectors", "3000", "--dim", "32",
         "--queries", "10", "--embed-queries", "2", "--seconds", "0.3", "--model", "tiny"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert report["bench"] == "service_latency" and report["vectors"] == 3000
    assert report["modes"] == ["exact"]  # 3,000 vectors in one open shard: no approximate index
    flat = report["exact"]
    for what in ("id", "upload", "text"):
        figures = flat[what]
        assert figures["http_p50_ms"] > 0 and figures["inprocess_p50_ms"] > 0
        assert figures["p50_ratio"] == pytest.approx(
            figures["http_p50_ms"] / figures["inprocess_p50_ms"], rel=0.01
        )
    assert flat["id"]["overhead_ms"] == pytest.approx(
        flat["id"]["http_p50_ms"] - flat["id"]["inprocess_p50_ms"], abs=0.011
    )
    assert report["http_floor_p50_ms"] > 0
    assert flat["throughput_rps"] > 0 and flat["throughput_brand_rps"] > 0
    assert report["p50_ratio"] == flat["id"]["p50_ratio"]  # the served mode's id search
    assert report["goal_met"] == (flat["id"]["p50_ratio"] <= 1.3)
    assert report["reload_s"] > 0 and report["server_peak_rss_mb"] >= 1
    assert report["swap_peak_over_steady"] == pytest.approx(
        report["server_peak_rss_mb"] / report["server_steady_rss_mb"], abs=0.01
    )
