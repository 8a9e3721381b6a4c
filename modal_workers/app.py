"""The Modal app: CLIP embedding on an A10G, running the same embed_refs path as local builds.

Deploy (once per change):   modal deploy modal_workers/app.py
Deploy-time settings (read once, below): FAISS_BUILDER_MODAL_GPU (A10G), FAISS_BUILDER_MODAL_MAX_CONTAINERS (10),
FAISS_BUILDER_MODAL_TIMEOUT_S (600), FAISS_BUILDER_MODAL_RETRIES (2), FAISS_BUILDER_MODAL_SCALEDOWN_S (120).
The orchestrator reaches it through modal_workers.remote.ModalEmbedClient; torch is imported only
inside the container (the orchestrator side imports nothing heavy from this file).
"""

# No `from __future__ import annotations`: modal.parameter() needs real type objects.
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
    from modal_workers.embedders import DEFAULT_CLIP_MODEL, ImageEmbedder, load_embedder
    from modal_workers.pipeline import embed_refs
    from modal_workers.types import FetchLimits, ImageRef


@app.cls(
    gpu=GPU,
    image=image,
    volumes={CACHE_DIR: hf_cache},
    max_containers=MAX_CONTAINERS,
    timeout=TIMEOUT_S,
    retries=modal.Retries(max_retries=RETRIES, backoff_coefficient=2.0, initial_delay=1.0),
    scaledown_window=SCALEDOWN_S,
)
class Embedder:
    """One loaded embedder per container; `embed` takes a batch of (id, url) pairs."""

    embedder: str = modal.parameter(default="clip")
    model: str = modal.parameter(default="")  # "" = the embedder's default model

    @modal.enter()
    def load(self) -> None:
        self.engine: ImageEmbedder = load_embedder(self.embedder, self.model or None)
        if not modal.is_local():
            hf_cache.commit()  # keep freshly downloaded weights for the next container

    @modal.method()
    def embed(
        self, refs: list[tuple[Any, str]], kinds: list[str], limits: dict[str, Any]
    ) -> dict[str, Any]:
        """{"ids", "vectors": kind -> float32 array, "failures": [dict]}: plain picklable data."""
        image_refs = [ImageRef(id=product_id, url=url) for product_id, url in refs]
        output = embed_refs(image_refs, kinds, self.engine, FetchLimits(**limits))
        return output.to_wire()

    @modal.method()
    def describe(self) -> dict[str, Any]:
        return describe_engine(self.engine)


def describe_engine(engine: ImageEmbedder) -> dict[str, Any]:
    """{"embedder", "model", "dims", "model_digest"} of the loaded engine (see embedder.py)."""
    return engine.describe()


@app.local_entrypoint()
def main(embedder: str = "clip", model: str = "") -> None:
    """`modal run modal_workers/app.py` prints what the deployed class would load."""
    instance = Embedder(embedder=embedder, model=model or DEFAULT_CLIP_MODEL)  # type: ignore[call-arg]
    print(instance.describe.remote())
