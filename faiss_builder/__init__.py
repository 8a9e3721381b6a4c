"""The edge: settings, catalog sources, the faiss-builder CLI and the demo."""
