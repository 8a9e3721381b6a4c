"""bench.gpu_feed's simulated A10G, bench.fleet's report shape, the bf16 round's CPU check."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.embed_throughput import cpu_bf16_support
from bench.gpu_feed import SimulatedA10G, gpu_rate

ROOT = Path(__file__).resolve().parents[2]


def test_bf16_round_runs_only_where_the_cpu_multiplies_bf16(tmp_path: Path) -> None:
    without = tmp_path / "amd"
    without.write_text("flags\t\t: fpu sse avx2 avx512f avx512bw\n")
    supported, reason = cpu_bf16_support(without)
    assert not supported and "neither AVX512-BF16 nor AMX" in reason
    with_amx = tmp_path / "spr"
    with_amx.write_text("flags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert cpu_bf16_support(with_amx) == (True, f"{with_amx} flags amx_bf16")


def test_the_simulated_gpu_costs_its_latency_model_and_releases_the_gil() -> None:
    gpu = SimulatedA10G(t_img_s=0.4e-3, launch_s=2e-3, forward_batch=128)
    assert round(gpu_rate(gpu)) == 1226  # 128 / (2 ms + 256 x 0.4 ms)
    batches = {v: np.zeros((128, 224, 224, 3), np.uint8) for v in ("color", "structure")}
    spins = [0]
    done = threading.Event()

    def spin() -> None:  # Python code that only runs while the GIL is free
        while not done.is_set():
            spins[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    started = time.perf_counter()
    out = gpu.embed_views(batches)
    elapsed = time.perf_counter() - started
    done.set()
    spinner.join()
    assert 0.104 <= elapsed < 2.0 and abs(gpu.busy_s - 0.1044) < 1e-9  # 2 s: a shared machine
    assert out["color"].shape == (128, 512) and spins[0] > 1000


def test_gpu_feed_reports_busy_fraction_and_share_of_the_limit() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_feed", "--images", "48", "--cores", "1,2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.splitlines()[0])
    row, *more = summary["rows"]
    assert row["cores"] == 1 and 0 < row["gpu_busy"] < 1 and row["of_limit"] > 0
    assert row["limit"] == min(row["gpu_images_per_s"], row["prep_one_core_images_per_s"])
    assert row["prepare_processes"] == 0  # one core: preparation stays in the process
    assert row["cpu_ms_per_image"] > 0 and row["server_cpu_ms_per_image"] > 0
    for two in more:  # where this machine has a second core: one preparation process per core
        assert two["cores"] == 2 and two["prepare_processes"] == 2 and two["images"] == 48
        assert 0 < two["gpu_busy"] < 1 and two["cpu_ms_per_image"] > 0
