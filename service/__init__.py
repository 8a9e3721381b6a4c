"""The HTTP search service (`faiss-builder serve`): FastAPI over one store, read-only."""
