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
         "--queries", "20", "--seconds", "0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert report["bench"] == "service_latency" and report["vectors"] == 3000
    assert report["http_p50_ms"] > 0 and report["inprocess_p50_ms"] > 0
    assert report["throughput_rps"] > 0 and report["throughput_brand_rps"] > 0
    assert report["p50_ratio"] == pytest.approx(
        report["http_p50_ms"] / report["inprocess_p50_ms"], rel=0.01
    )
