"""Names of the deployed Modal objects: the one home for both the app file and the client.

Kept free of any import, so `modal deploy modal_workers/app.py` (which imports the app file as a
script) and the orchestrator-side client (modal_workers.remote) read the very same strings.
"""

from __future__ import annotations

APP_NAME = "modal-faiss-builder"
CLS_NAME = "Embedder"
HF_CACHE_VOLUME = f"{APP_NAME}-hf-cache"
