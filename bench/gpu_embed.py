"""GPU embed rate: the embed worker's images/s for ViT-B/32 with decode included, and the forward alone.

    python -m bench.gpu_embed [--quick]

Runs only where CUDA is available; elsewhere it prints `"gpu": null` with the reason and no figures.
One command on a GPU machine: `python -m bench.gpu_embed` (no download: random ViT-B/32 weights).
GPU utilisation during the pipeline run is sampled every 0.2 s (nvidia-smi, else
torch.cuda.utilization) and reported as its mean (`gpu_utilisation_mean`, percent).
Same model shape, images and pipeline as bench.embed_throughput, on the GPU in fp16 (the worker's
default there), with fetch/decode threads feeding it over local HTTP.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench._common import emit

BATCH = 256


def utilisation_now() -> float | None:
    """The GPU's utilisation in percent right now, or None when nothing can tell."""
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=5, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return float(done.stdout.split()[0])
    try:
        return float(torch.cuda.utilization())
    except Exception:  # no pynvml
        return None


class UtilisationSampler:
    """Samples utilisation_now() in a thread while the `with` block runs."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s = every_s
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            value = utilisation_now()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> UtilisationSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def mean(self) -> float | None:
        return round(statistics.mean(self.samples), 1) if self.samples else None


def measure(quick: bool) -> dict[str, Any]:
    from bench.embed_throughput import build_vit_b32, pipeline_rate, serve_upscaled_photos
    from modal_workers.clip import ClipEmbedder
    from modal_workers.types import FetchLimits
    from tests.support.image_server import ImageServer

    images = 512 if quick else 4096
    with tempfile.TemporaryDirectory() as tmp, ImageServer() as server:
        embedder = ClipEmbedder(str(build_vit_b32(Path(tmp))), device="cuda")
        pixels = torch.randn(BATCH, 3, 224, 224, device="cuda")
        embedder.forward_pixel_values(pixels)  # warm-up: kernels, allocator
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(images // BATCH):
            embedder.forward_pixel_values(pixels)  # returns numpy: synchronises each batch
        forward = (images // BATCH) * BATCH / (time.perf_counter() - started)
        refs = serve_upscaled_photos(server, images)
        with UtilisationSampler() as sampler:
            full = pipeline_rate(embedder, refs, FetchLimits(allow_private_urls=True, threads=32))
    return {
        "gpu": torch.cuda.get_device_name(0),
        "precision": str(embedder.dtype).removeprefix("torch."),
        "forward_images_per_s": round(forward, 1),
        "pipeline_images_per_s_3_kinds": round(full, 1),
        "pipeline_forwards_per_s": round(2 * full, 1),
        "ratio_per_forward": round(2 * full / forward, 3),
        "gpu_utilisation_mean": sampler.mean(),
        "utilisation_samples": len(sampler.samples),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        reason = "no CUDA device on this machine (torch.cuda.is_available() is False)"
        emit({"bench": "gpu_embed", "gpu": None, "reason": reason}, f"GPU embed: skipped, {reason}")
        return
    report = {"bench": "gpu_embed"} | measure(args.quick)
    emit(
        report,
        f"GPU {report['gpu']} ({report['precision']}): forward {report['forward_images_per_s']} img/s; "
        f"fetch+decode+views+forward {report['pipeline_images_per_s_3_kinds']} img/s (3 kinds, "
        f"{report['ratio_per_forward']:.2f} of the forward per forward); GPU utilisation "
        f"{report['gpu_utilisation_mean']}%",
    )


if __name__ == "__main__":
    main()
