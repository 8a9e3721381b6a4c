"""Prefect flows: build-index and alignment-check. They sequence tasks and nothing else."""
