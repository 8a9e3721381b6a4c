"""The search service as a Modal web endpoint (`@modal.asgi_app`) over the Supabase store.

Deploy:   modal deploy service/modal_app.py
Needs a Modal secret named by FAISS_BUILDER_SERVICE_MODAL_SECRET (default `faiss-builder-search`)
holding SUPABASE_URL and SUPABASE_KEY (and any FAISS_BUILDER_* / FAISS_BUILDER_SERVICE_*
settings, e.g. FAISS_BUILDER_SERVICE_API_KEY: a Modal endpoint is public). Each container
builds the app once: it loads the store's last commit and the embedder that built it once,
then follows new commits as `faiss-builder serve` does. CPU containers: a query embeds one
image or text, and the search is a scan of memory.
"""

from __future__ import annotations

import os
from typing import Any

import modal

from modal_workers.names import APP_NAME, HF_CACHE_VOLUME

WEB_APP_NAME = f"{APP_NAME}-search"
PYPROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pyproject.toml")
SECRET = os.environ.get("FAISS_BUILDER_SERVICE_MODAL_SECRET", "faiss-builder-search")
CPU = float(os.environ.get("FAISS_BUILDER_SERVICE_MODAL_CPU", "4.0"))
MEMORY_MB = int(os.environ.get("FAISS_BUILDER_SERVICE_MODAL_MEMORY_MB", "8192"))
CACHE_DIR = "/cache"

app = modal.App(WEB_APP_NAME)
image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install_from_pyproject(PYPROJECT)  # the project's own pins, one list
    .env({"HF_HOME": f"{CACHE_DIR}/hf", "FAISS_BUILDER_STORE": "supabase"})
    .add_local_python_source("application", "sharding", "modal_workers")
    # The page (service/static/index.html) is package data: keep every file but bytecode.
    .add_local_python_source("service", ignore=lambda path: "__pycache__" in path.parts)
)
hf_cache = modal.Volume.from_name(HF_CACHE_VOLUME, create_if_missing=True)


@app.function(
    image=image,
    secrets=[modal.Secret.from_name(SECRET)],
    volumes={CACHE_DIR: hf_cache},
    cpu=CPU,
    memory=MEMORY_MB,
    scaledown_window=300,
)
@modal.concurrent(max_inputs=32)
@modal.asgi_app()
def web() -> Any:
    """One FastAPI app per container: the store and the model are loaded once, here."""
    from application.settings import load_settings
    from service.app import create_app
    from service.settings import ServiceSettings

    catalog = os.environ.get("FAISS_BUILDER_CATALOG", "supabase")
    from_env: dict[str, Any] = {}  # every service setting from the secret's environment
    return create_app(load_settings(store="supabase", catalog=catalog), ServiceSettings(**from_env))
