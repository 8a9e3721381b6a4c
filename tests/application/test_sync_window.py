"""The sync's overlap window and stale failure records, on a local catalog file with a clock the
test sets (real writer, real FAISS store on disk; the embedder a stand-in that derives each
vector from the row's id and image_url, so a re-embedded row is visible as one)."""

from __future__ import annotations

import csv
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from application.catalog.base import Product, canonical_time
from application.catalog.local import LocalCatalog
from application.sync import MAX_SEEN, sync_catalog
from modal_workers.types import EmbedOutput, FailedProduct
from sharding import BuildConfig, EmbeddedBatch, IndexWriter, LocalStore, check_store, load_index
from sharding.config import RollupLimits
from sharding.storage import InjectedCrash

BASE = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()
DIM = 8


def at(seconds: float) -> str:
    return canonical_time(datetime.fromtimestamp(BASE + seconds, UTC))


def _vector(product_id: object, url: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(f"{product_id}|{url}".encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


class Catalog:
    """A CSV catalog file the test rewrites; reopened (re-validated) at every sync."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[int, dict[str, object]] = {}

    def put(self, product_id: int, url: str, stamp: str, deleted: str = "") -> None:
        self.rows[product_id] = {"id": product_id, "image_url": url, "brand": "b",
                                 "updated_at": stamp, "deleted_at": deleted}  # fmt: skip

    def open(self) -> LocalCatalog:
        with self.path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(
                handle, ["id", "image_url", "brand", "updated_at", "deleted_at"]
            )
            writer.writeheader()
            writer.writerows(self.rows[i] for i in sorted(self.rows))
        return LocalCatalog(self.path)


class Run:
    """A sync over a writer opened on the store, embedding with the stand-in (counted)."""

    def __init__(self, store: Path, catalog: Catalog, **rollup: int) -> None:
        self.store, self.catalog = LocalStore(store), catalog
        self.rollup = RollupLimits(**rollup) if rollup else None
        self.embedded: list[object] = []
        self.broken: set[str] = set()

    def writer(self, **crash: Any) -> IndexWriter:
        config = BuildConfig("t", "t", {"color": DIM})
        return IndexWriter.open(self.store, config, run_id="sync", rollup=self.rollup, **crash)

    def embed(self, products: list[Product]) -> EmbedOutput:
        ok = [p for p in products if p.image_url not in self.broken]
        self.embedded += [p.id for p in ok]
        failures = [
            FailedProduct(id=p.id, reason="not_an_image", message=f"{p.image_url}: not an image")
            for p in products
            if p.image_url in self.broken
        ]
        vectors = np.stack([_vector(p.id, p.image_url) for p in ok]) if ok else np.zeros((0, DIM))
        return EmbedOutput(ids=[p.id for p in ok], vectors={"color": vectors}, failures=failures)

    def build(self, batch: int = 100) -> None:
        """The append pass of a build: every row above the cursor."""
        writer, catalog = self.writer(), self.catalog.open()
        while page := catalog.page(writer.cursor("color"), batch):
            output = self.embed([p for p in page if not p.deleted])
            ids = list(output.ids)
            writer.add_batch(
                EmbeddedBatch(ids, ["b"] * len(ids), output.vectors, output.failures, page[-1].id)
            )
            writer.commit()
        writer.finish()

    def sync(
        self, now: float, overlap_s: float = 300, batch: int = 100, **crash: Any
    ) -> dict[str, Any]:
        writer = self.writer(**crash)
        session = SimpleNamespace(
            catalog=self.catalog.open(), writer=writer, kinds=["color"],
            embed=self.embed,
        )  # fmt: skip
        self.embedded = []
        stats = sync_catalog(
            cast(Any, session), batch, overlap_s=overlap_s, clock=lambda: BASE + now
        )
        writer.finish()
        return stats.to_dict() | {"embedded": sorted(self.embedded)}  # type: ignore[type-var]

    def live(self) -> dict[object, np.ndarray]:
        index = load_index(self.store, "color")
        assert len(set(index.ids)) == len(index.ids), "an id is live twice"
        return {pid: np.asarray(index.vectors[i]) for i, pid in enumerate(index.ids)}


def _catalog(tmp_path: Path, rows: int = 10) -> tuple[Catalog, Run]:
    catalog = Catalog(tmp_path / "catalog.csv")
    for i in range(1, rows + 1):
        catalog.put(i, f"img/{i}", at(-86_400))
    run = Run(tmp_path / "store", catalog)
    run.sync(0)  # starts following
    run.build()
    return catalog, run


def test_a_late_commit_below_the_position_is_applied_once_and_applied_rows_are_not_redone(
    tmp_path: Path,
) -> None:
    catalog, run = _catalog(tmp_path)
    catalog.put(3, "img/3-b", at(100))
    catalog.put(5, "img/5-b", at(200))
    first = run.sync(210)
    assert first["embedded"] == [3, 5] and first["already_applied"] == 0
    # Row 4's transaction started at 150 and committed after that sync read past 200.
    catalog.put(4, "img/4-b", at(150))
    plain = catalog.open().changed_since(at(200), 5, 100)
    assert plain == []  # a plain keyset after the position misses it
    second = run.sync(250)
    assert second["embedded"] == [4] and second["already_applied"] == 2  # 3 and 5 re-read
    third = run.sync(260)
    assert third["embedded"] == [] and third["already_applied"] == 3
    before = (tmp_path / "store" / "progress.json").read_bytes()
    assert run.sync(270)["embedded"] == []
    assert (tmp_path / "store" / "progress.json").read_bytes() == before  # nothing written
    live = run.live()
    for pid, url in ((3, "img/3-b"), (4, "img/4-b"), (5, "img/5-b"), (6, "img/6")):
        assert np.allclose(live[pid], _vector(pid, url)), pid
    assert len(live) == 10
    # Once the window has passed, nothing is re-read and the remembered rows are dropped.
    late = run.sync(10_000)
    assert late["rows_read"] == 3 and late["embedded"] == []
    progress = (tmp_path / "store" / "progress.json").read_text()
    assert '"seen"' not in progress and '"window_from"' not in progress
    assert run.sync(10_100)["rows_read"] == 0
    assert check_store(run.store).ok


def test_a_row_changed_again_in_the_window_is_re_embedded_and_a_soft_delete_applies(
    tmp_path: Path,
) -> None:
    catalog, run = _catalog(tmp_path)
    catalog.put(3, "img/3-b", at(100))
    catalog.put(6, "img/6-b", at(120))
    catalog.put(11, "img/11", at(125))  # a new row above the cursor: the append pass's
    assert run.sync(130)["embedded"] == [3, 6]
    run.build()
    catalog.put(3, "img/3-c", at(110))  # a later version, stamped by a late transaction
    catalog.put(6, "img/6", at(120), deleted=at(120))  # same stamp, now soft-deleted
    catalog.put(8, "img/8-b", at(140))
    again = run.sync(150)
    assert again["embedded"] == [3, 8] and again["soft_deleted"] == 1  # 11 is not redone
    assert again["already_applied"] == 1
    live = run.live()
    assert 6 not in live and np.allclose(live[3], _vector(3, "img/3-c")) and len(live) == 10
    assert run.sync(160)["embedded"] == []


def test_the_window_remembers_at_most_max_seen_rows(tmp_path: Path) -> None:
    rows = MAX_SEEN + 50
    catalog, run = _catalog(tmp_path, rows)
    for i in range(1, rows + 1):  # one stamp per row, all within the window
        catalog.put(i, f"img/{i}-b", at(i / 100))
    first = run.sync(rows / 100 + 1, batch=1000)
    assert len(first["embedded"]) == rows
    again = run.sync(rows / 100 + 2, batch=1000)
    assert again["embedded"] == [] and again["rows_read"] == MAX_SEEN
    assert check_store(run.store).ok


def test_failure_records_in_rolled_chunks_are_dropped_when_the_product_embeds(
    tmp_path: Path,
) -> None:
    catalog = Catalog(tmp_path / "catalog.csv")
    run = Run(tmp_path / "store", catalog, failure_chunk=2)
    for i in range(1, 8):
        catalog.put(i, f"img/{i}" if i % 2 == 0 else f"bad/{i}", at(-86_400))
    run.broken = {f"bad/{i}" for i in range(1, 8)}
    run.sync(0)
    run.build(batch=2)
    writer = run.writer()
    assert writer.failed_ids() == [1, 3, 5, 7] and len(writer.progress.failures.chunks) == 2
    chunks = sorted(p.name for p in (tmp_path / "store").glob("failed_*.json"))
    catalog.put(3, "img/3", at(100))  # fixed
    catalog.put(1, "img/1", at(110))  # fixed too: the rest of the chunk [1, 3], rewritten first
    catalog.put(5, "bad/5-again", at(120))  # failed again: one fresh record
    run.broken.add("bad/5-again")
    stats = run.sync(1_000, batch=1)  # one page (and commit) each
    assert stats["embedded"] == [1, 3] and stats["failed"] == 1
    writer = run.writer()
    records = writer.failures()
    assert [r.id for r in records] == [7, 5] and writer.progress.failures.total == 2
    assert records[-1].message == "bad/5-again: not an image"
    assert {1, 3} <= set(run.live()) and 5 not in run.live()
    left = sorted(p.name for p in (tmp_path / "store").glob("failed_*.json"))
    assert len(left) == 1 and left[0] not in chunks  # [1, 3] went, [5, 7] became [7]
    report = check_store(run.store)
    assert report.ok and report.failures == 2, report.to_markdown()


def test_a_sync_killed_at_every_write_while_re_reading_the_window_applies_each_change_once(
    tmp_path: Path,
) -> None:
    def scenario(folder: Path) -> Run:
        folder.mkdir()
        catalog, run = _catalog(folder)
        for pid, second in ((3, 100), (5, 200)):
            catalog.put(pid, f"img/{pid}-b", at(second))
        run.sync(210, batch=1)
        catalog.put(4, "img/4-b", at(150))  # late, below the position
        catalog.put(2, "img/2-b", at(160))  # late too
        catalog.put(6, "img/6", at(220), deleted=at(220))  # a new soft delete above it
        catalog.put(8, "img/8-b", at(230))  # a new change above it
        return run

    reference = scenario(tmp_path / "reference")
    done = reference.sync(250, batch=1)
    assert done["embedded"] == [2, 4, 8] and done["already_applied"] == 2
    expected = reference.live()
    dead = load_index(reference.store, "color").dead_slots
    for n in range(1, 40):
        run = scenario(tmp_path / f"kill-{n}")
        try:
            run.sync(250, batch=1, crash_after_writes=n)
        except InjectedCrash:
            pass
        else:
            assert n > 3, "the sync wrote too little to test"
            break
        resumed = run.sync(250, batch=1)
        got = run.live()
        assert set(got) == set(expected), n
        for pid, vector in expected.items():
            np.testing.assert_allclose(got[pid], vector, atol=1e-6)
        assert load_index(run.store, "color").dead_slots == dead, n  # nothing applied twice
        assert run.sync(260)["embedded"] == [], n
        assert resumed["rows_read"] >= 1
    else:
        pytest.fail("the sync never finished within 40 writes")
