"""The Modal app: CLIP embedding on an A10G, running the same embed_refs path as local builds.

Deploy (once per change):   modal deploy modal_workers/app.py
Deploy-time settings (read once, below): FAISS_BUILDER_MODAL_GPU (A10G), FAISS_BUILDER_MODAL_MAX_CONTAINERS (10),
FAISS_BUILDER_MODAL_TIMEOUT_S (600), FAISS_BUILDER_MODAL_RETRIES (2), FAISS_BUILDER_MODAL_SCALEDOWN_S (120),
FAISS_BUILDER_MODAL_CPU (8.0 physical cores reserved for fetch/decode/views), FAISS_BUILDER_MODAL_MEMORY_MB
(16384), FAISS_BUILDER_MODAL_INPUTS_PER_CONTAINER (2 calls at once per container, so one call's
download and decode overlap the other's forward), FAISS_BUILDER_MODAL_PREPARE_PROCESSES (auto: one
preparation process per usable core, none below two cores; 0 = prepare in the embedding process).
The orchestrator reaches it through modal_workers.remote.ModalEmbedClient; torch is imported only
inside the container (the orchestrator side imports nothing heavy from this file).
"""

# No `from __future__ import annotations`: modal.parameter() needs real type objects.
import math
import os
from typing import Any

import modal

from modal_workers.names import APP_NAME, CLS_NAME, HF_CACHE_VOLUME

__all__ = ["APP_NAME", "CLS_NAME", "Embedder", "app", "describe_engine"]

CACHE_DIR = "/cache"
MINUTES = 60


def deploy_setting(name: str, default: str) -> str:
    """The one place that reads the deploy-time environment."""
    return os.environ.get(f"FAISS_BUILDER_MODAL_{name}", default)


GPU = deploy_setting("GPU", "A10G")
MAX_CONTAINERS = int(deploy_setting("MAX_CONTAINERS", "10"))
TIMEOUT_S = int(deploy_setting("TIMEOUT_S", str(10 * MINUTES)))
RETRIES = int(deploy_setting("RETRIES", "2"))
SCALEDOWN_S = int(deploy_setting("SCALEDOWN_S", str(2 * MINUTES)))
# Modal reserves 0.125 core by default; preparing an image costs ~6-14 ms of CPU (bench.gpu_feed),
# so an A10G (~1,250 images/s for three kinds) needs several cores to stay busy.
CPU = float(deploy_setting("CPU", "8.0"))
MEMORY_MB = int(deploy_setting("MEMORY_MB", "16384"))
INPUTS_PER_CONTAINER = int(deploy_setting("INPUTS_PER_CONTAINER", "2"))
# Preparation processes (fetch, decode, views): "auto" = one per usable core (the reservation,
# the CPU affinity and the cgroup quota, whichever is least), none below two cores.
PREPARE_PROCESSES = deploy_setting("PREPARE_PROCESSES", "auto")
# Fetch/decode threads per reserved core: a fetch waits on the network most of its time.
THREADS_PER_CPU = 4


def container_threads(cpu: float = CPU, asked: int = 0) -> int:
    """Fetch/decode threads of one call in a container reserving `cpu` cores (at least `asked`)."""
    return max(asked, math.ceil(THREADS_PER_CPU * cpu))


def container_preparation(
    cpu: float = CPU, callers: int = INPUTS_PER_CONTAINER, asked: str | None = None
) -> tuple[int, int]:
    """(preparation processes, threads in each) for a container reserving `cpu` cores.

    0 processes: the calls prepare in the embedding process (one core: no pool to pay for). The
    processes together run as many fetch threads as `callers` in-process calls would.
    """
    from modal_workers.prepare_pool import preparation_processes  # numpy/Pillow/httpx, no torch

    asked = PREPARE_PROCESSES if asked is None else asked
    processes = preparation_processes(cpu, None if asked == "auto" else int(asked))
    if processes == 0:
        return 0, 0
    return processes, max(2, math.ceil(container_threads(cpu) * max(1, callers) / processes))


def deployment() -> dict[str, Any]:
    """What this deployment reserves and how many calls it takes at once (plain data)."""
    return {
        "gpu": GPU,
        "cpu": CPU,
        "memory_mb": MEMORY_MB,
        "max_containers": MAX_CONTAINERS,
        "inputs_per_container": INPUTS_PER_CONTAINER,
        "threads_per_call": container_threads(),
        "prepare_processes": container_preparation()[0],
        "timeout_s": TIMEOUT_S,
        "retries": RETRIES,
    }


image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(  # the same pins as pyproject.toml
        "torch==2.13.0",
        "transformers==5.24.0",
        "safetensors==0.8.0",
        "numpy==2.4.6",
        "Pillow==13.0.0",
        "httpx==0.28.1",
        "xxhash==4.1.0",
    )
    .env({"HF_HOME": f"{CACHE_DIR}/huggingface", "TOKENIZERS_PARALLELISM": "false"})
    .add_local_python_source("modal_workers")
)

# Weights are downloaded once into this volume and reused by every container after that.
hf_cache = modal.Volume.from_name(HF_CACHE_VOLUME, create_if_missing=True)

app = modal.App(APP_NAME)

with image.imports():
    import dataclasses

    from modal_workers.embedders import DEFAULT_CLIP_MODEL, ImageEmbedder, load_embedder
    from modal_workers.fetch import SharedClients
    from modal_workers.pipeline import embed_refs
    from modal_workers.prepare_pool import PreparePool
    from modal_workers.types import FetchLimits, ImageRef


@app.cls(
    gpu=GPU,
    cpu=CPU,
    memory=MEMORY_MB,
    image=image,
    volumes={CACHE_DIR: hf_cache},
    max_containers=MAX_CONTAINERS,
    timeout=TIMEOUT_S,
    retries=modal.Retries(max_retries=RETRIES, backoff_coefficient=2.0, initial_delay=1.0),
    scaledown_window=SCALEDOWN_S,
)
@modal.concurrent(max_inputs=INPUTS_PER_CONTAINER)
class Embedder:
    """One loaded embedder and one HTTP client per container; `embed` takes (id, url) pairs.

    The forward batch is the embedder's own for its device (CLIP: 128 images per call of
    embed_views on CUDA, i.e. 256-image forwards for two views, fp16; 32 on CPU);
    INPUTS_PER_CONTAINER calls run at once. Preparation (fetch, decode, views) runs in the
    container's PreparePool, started once in `load`: one process per usable core
    (container_preparation), each with its own HTTP client; with one core it runs in
    container_threads() threads of each call.
    """

    embedder: str = modal.parameter(default="clip")
    model: str = modal.parameter(default="")  # "" = the embedder's default model

    @modal.enter()
    def load(self) -> None:
        self.engine: ImageEmbedder = load_embedder(self.embedder, self.model or None)
        self.clients = SharedClients(
            callers=INPUTS_PER_CONTAINER
        )  # TLS context built once per container, not per call
        processes, threads = container_preparation()
        self.pool: PreparePool | None = PreparePool.for_embedder(
            self.engine, processes, threads_per_process=threads, callers=INPUTS_PER_CONTAINER
        )  # once per container; None = prepare in-process
        if not modal.is_local():
            hf_cache.commit()  # keep freshly downloaded weights for the next container

    @modal.method()
    def embed(
        self, refs: list[tuple[Any, str]], kinds: list[str], limits: dict[str, Any]
    ) -> dict[str, Any]:
        """{"ids", "vectors": kind -> float32 array, "failures": [dict]}: plain picklable data."""
        image_refs = [ImageRef(id=product_id, url=url) for product_id, url in refs]
        fetch = FetchLimits(**limits)
        fetch = dataclasses.replace(fetch, threads=container_threads(asked=fetch.threads))
        output = embed_refs(
            image_refs,
            kinds,
            self.engine,
            fetch,
            forward_batch=self.engine.forward_batch,
            client=self.clients.get(fetch),
            pool=self.pool,
        )
        return output.to_wire()

    @modal.exit()
    def close(self) -> None:
        """Stop the preparation processes and close the fetch clients."""
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()
        if getattr(self, "clients", None) is not None:
            self.clients.close()

    @modal.method()
    def describe(self) -> dict[str, Any]:
        """The engine's identity, and under "deployment" what the container reserves."""
        return describe_engine(self.engine) | {"deployment": deployment()}


def describe_engine(engine: ImageEmbedder) -> dict[str, Any]:
    """{"embedder", "model", "dims", "model_digest"} of the loaded engine (see embedder.py)."""
    return engine.describe()


@app.local_entrypoint()
def main(embedder: str = "clip", model: str = "") -> None:
    """`modal run modal_workers/app.py` prints what the deployed class would load."""
    instance = Embedder(embedder=embedder, model=model or DEFAULT_CLIP_MODEL)  # type: ignore[call-arg]
    print(instance.describe.remote())
