"""Thin Prefect tasks over sharding/ and modal_workers/."""
