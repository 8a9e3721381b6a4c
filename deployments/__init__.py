"""Prefect deployments of the flows (prefect.yaml) and a worker-free serve entry point."""
