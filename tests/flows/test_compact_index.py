"""The compact-index flow under a real Prefect server: it compacts, checks clean, and refuses a
second writer with the lease (exit code 5's error), like a build."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from flows.compact_index import compact_index
from sharding.checks import check_store
from sharding.errors import LeaseHeld
from sharding.lease import StoreLease
from sharding.loader import load_index
from sharding.local_store import LocalStore
from sharding.state import read_progress
from tests.sharding.test_compact import brand, live_ids, make_dirty


def _catalog(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "image_url", "brand"])
        out.writerows([pid, f"images/{pid}.jpg", brand(pid) or ""] for pid in live_ids())
    return path


def test_the_flow_compacts_and_the_store_checks_clean(prefect_api: object, tmp_path: Path) -> None:
    store = make_dirty(tmp_path / "store")
    catalog = _catalog(tmp_path / "catalog.csv")
    summary = compact_index(store=str(tmp_path / "store"), catalog=str(catalog), threshold=0.3)
    assert sorted(summary["compacted"]) == ["color", "combined"]
    assert summary["brands_not_in_catalog"] == 0
    progress = read_progress(store)
    assert progress is not None
    assert progress.kinds["color"].vectors_per_brand == dict(
        sorted(Counter(brand(i) or "(none)" for i in live_ids()).items())
    )
    assert load_index(store, "combined").ids == live_ids()
    report = check_store(store)
    assert report.ok and not report.problems, report.to_markdown()


def test_the_flow_waits_for_no_one_when_a_build_holds_the_lease(
    prefect_api: object, tmp_path: Path
) -> None:
    store = make_dirty(tmp_path / "store")
    before = read_progress(store)
    held = StoreLease.acquire(LocalStore(tmp_path / "store"), "a-build", ttl_s=30)
    try:
        with pytest.raises(LeaseHeld):
            compact_index(store=str(tmp_path / "store"), catalog=str(_catalog(tmp_path / "c.csv")))
    finally:
        held.release()
    assert read_progress(store) == before
