"""`python -m bench --quick` runs and every bench prints a JSON object with its figures (no timing goals)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAST = "flow_ceiling,checkpoint_bytes,index_load,gpu_embed"
EXPECTED_KEYS = {
    "flow_ceiling": {"flow_vectors_per_s", "raw_vectors_per_s", "flow_overhead_ms_per_batch"},
    "checkpoint_bytes": {"ratio", "seconds_ratio", "at_10k", "at_large"},
    "index_load": {"load_ratio", "search_ratio", "same_results"},
    "gpu_embed": {"gpu"},
}


@pytest.mark.slow
def test_quick_bench_prints_one_json_object_per_bench_and_a_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", FAST],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    by_name = {report["bench"]: report for report in reports}
    assert set(by_name) == set(EXPECTED_KEYS)
    for name, keys in EXPECTED_KEYS.items():
        assert keys <= set(by_name[name]), name
    assert by_name["index_load"]["same_results"] is True
    gpu = by_name["gpu_embed"]
    assert gpu["gpu"] is not None or gpu["reason"]
    assert "| goal | measured | target | met |" in done.stdout
