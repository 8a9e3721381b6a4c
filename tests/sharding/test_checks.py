"""check_store: a healthy store passes; each kind of damage is reported with its own code."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import pytest

from sharding import BuildConfig, IndexWriter, InjectedCrash, LocalStore, check_store
from tests.sharding.builds import Catalog, run_build


@pytest.fixture
def built(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path)
    run_build(store)
    return store


def _codes(store: LocalStore) -> set[str]:
    return {p.code for p in check_store(store).problems}


def test_healthy_store_passes_and_renders(built: LocalStore) -> None:
    report = check_store(built)
    assert report.ok and report.problems == []
    assert report.kinds["color"].vectors == report.kinds["color"].committed_vectors == 42
    assert "## Store structure: ok" in report.to_markdown()  # heading of 1cd8c86
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_crash_leftovers_are_warnings_not_failures(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(InjectedCrash):
        run_build(store, crash_after_writes=12)
    report = check_store(store)
    assert report.ok
    assert {p.code for p in report.problems} >= {"uncommitted_object", "uncommitted_tail"}
    assert all(p.severity == "warning" for p in report.problems)


def test_id_map_tampering_is_a_sha_mismatch(built: LocalStore) -> None:
    path = built.root / "id_map_color_shard_00001.json"
    ids = json.loads(path.read_text())
    path.write_text(json.dumps([*ids[:-1], ids[0]]))
    report = check_store(built)
    assert not report.ok and "sha256_mismatch" in {p.code for p in report.problems}
    assert "FAIL" in report.to_markdown()


def test_missing_object_and_wrong_dimension(built: LocalStore) -> None:
    (built.root / "clip_combined_shard_00003.index").unlink()
    faiss.write_index(faiss.IndexFlatIP(5), str(built.root / "clip_color_shard_00005.index"))
    assert {"missing_object", "dimension"} <= _codes(built)


def test_unnormalised_vectors_are_reported(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    config = BuildConfig("h", "m", {"color": 4}, shard_max_vectors=10)
    writer = IndexWriter.open(store, config, run_id="r")
    batch = Catalog().batch([1, 2, 3], {"color": 4})
    batch.vectors["color"] = batch.vectors["color"] * 2.0
    writer.add_batch(batch)
    writer.finish()
    assert {p.code for p in check_store(store).problems} == {"vector_norms"}


def test_duplicate_ids_across_shards_are_reported(built: LocalStore) -> None:
    first = json.loads((built.root / "id_map_color_shard_00001.json").read_text())
    path = built.root / "id_map_color_shard_00002.json"
    forged = json.loads(path.read_text())
    forged[0] = first[0]
    path.write_text(json.dumps(forged, separators=(",", ":")))
    assert "duplicate_ids" in _codes(built) or "sha256_mismatch" in _codes(built)


def test_unknown_kind_and_empty_store(tmp_path: Path, built: LocalStore) -> None:
    assert {p.code for p in check_store(built, ["structure"]).problems} == {"unknown_kind"}
    assert {p.code for p in check_store(LocalStore(tmp_path / "empty")).problems} == {"no_progress"}


@pytest.mark.parametrize("field", ["sha256", "id_map_sha256"])
def test_a_changed_sha256_digit_is_an_error_even_when_xxh3_matches(
    built: LocalStore, field: str
) -> None:
    path = built.root / "progress.json"
    progress = json.loads(path.read_text())
    record = progress["kinds"]["color"]["shards"][-1]
    digest = record[field]
    record[field] = ("1" if digest[0] != "1" else "2") + digest[1:]
    path.write_text(json.dumps(progress))
    report = check_store(built)
    assert not report.ok, report.to_markdown()
    mismatches = [p for p in report.problems if p.code == "sha256_mismatch"]
    assert [p.severity for p in mismatches] == ["error"]
    name = record["name" if field == "sha256" else "id_map"]
    assert name in mismatches[0].message and "sha256 differs" in mismatches[0].message
    assert "uncommitted_tail" not in {p.code for p in report.problems}


@pytest.mark.parametrize(
    ("change", "severity"),
    [
        (lambda ids: ids[:-5], "warning"),  # written before the last slots were added
        (lambda ids: [ids[0], 999, *ids[1:]], "warning"),  # before a compaction dropped a slot
        (lambda ids: [*ids, None, 998], "warning"),  # the same, a dropped slot at the end
        (lambda ids: [ids[1], ids[0], *ids[2:]], "error"),  # two ids swapped
        (lambda ids: [None] * (len(ids) + 1), "error"),  # no live id in it
        (lambda ids: [*ids[:3], *ids[4:], 997, 996], "error"),  # a live id missing
    ],
)
def test_a_full_id_map_that_lags_is_a_warning_and_one_that_disagrees_an_error(
    built: LocalStore, change: object, severity: str
) -> None:
    path = built.root / "id_map_color.json"
    ids = json.loads(path.read_text())
    assert len(ids) == 42 and None not in ids
    path.write_text(json.dumps(change(ids)))  # type: ignore[operator]
    found = {(p.code, p.severity) for p in check_store(built).problems if p.kind == "color"}
    code = "stale_full_id_map" if severity == "warning" else "full_id_map_mismatch"
    assert found == {(code, severity)}
