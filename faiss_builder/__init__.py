"""The command-line edge: the faiss-builder CLI, its rendering and exit codes, the demo, doctor."""
