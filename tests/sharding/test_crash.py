"""Kill the writer at every storage write of a multi-checkpoint build; resume exactly once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sharding import InjectedCrash, LocalStore, check_store, load_index, read_progress
from sharding.storage import CountingStorage
from tests.sharding.builds import SMALL, Catalog, run_build, unit_vector


def _snapshot(store: LocalStore) -> dict[str, tuple[list, np.ndarray]]:
    indexes = {kind: load_index(store, kind) for kind in SMALL.dims}
    return {k: (ix.ids, np.stack([ix.vector(i) for i in ix.ids])) for k, ix in indexes.items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict]:
    store = CountingStorage(LocalStore(tmp_path_factory.mktemp("reference")))
    writer = run_build(store)
    progress = writer.progress
    # The build must be big enough to exercise rotation, segments and several checkpoints.
    assert progress.commit_seq >= 3
    assert all(len(progress.kinds[k].segments) >= 1 for k in SMALL.dims)
    assert len(progress.failures.chunks) >= 1
    return store.writes, _snapshot(store.inner)  # type: ignore[arg-type]


@pytest.mark.parametrize("when", ["before", "after"])
def test_crash_at_every_write_then_resume_matches_uninterrupted_build(
    tmp_path: Path, reference: tuple[int, dict], when: str
) -> None:
    total_writes, expected = reference
    assert total_writes >= 30
    for n in range(1, total_writes + 1):
        store = LocalStore(tmp_path / f"{when}-{n}")
        with pytest.raises(InjectedCrash):
            run_build(store, crash_after_writes=n, crash_when=when, run_id="dies")
        run_build(store, run_id="resumes")
        got = _snapshot(store)
        for kind, (ids, vectors) in expected.items():
            assert got[kind][0] == ids, f"crash at write {n} ({when}): {kind} ids differ"
            np.testing.assert_allclose(got[kind][1], vectors, atol=1e-6)
        report = check_store(store)
        assert report.ok, f"crash at write {n} ({when}):\n{report.to_markdown()}"
        assert report.failures == len(Catalog().ids()) - len(Catalog().indexed())


def test_second_crash_during_resume_is_also_recovered(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(InjectedCrash):
        run_build(store, crash_after_writes=17)
    with pytest.raises(InjectedCrash):
        run_build(store, crash_after_writes=9, crash_when="after")
    run_build(store)
    index = load_index(store, "combined")
    assert index.ids == Catalog().indexed()
    assert np.allclose(index.vector(5), unit_vector(5, 6), atol=1e-6)
    progress = read_progress(store)
    assert progress is not None and progress.kinds["color"].cursor == Catalog().n
