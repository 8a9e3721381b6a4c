"""bench.sync_cost at a small size: a sync with nothing changed reads one empty page and writes
nothing; a sync of changes costs about what appending as many products does."""

from __future__ import annotations

from bench.sync_cost import changes_vs_append, dead_search, no_change


def test_a_sync_with_no_changes_writes_nothing_and_reads_one_page() -> None:
    for n in (2_000, 20_000):
        cost = no_change(n, 8)
        assert cost["catalog_requests"] == 1 and cost["catalog_rows"] == 0
        assert cost["bytes_written"] == cost["writes"] == cost["shard_files_written"] == 0


def test_changes_cost_about_an_append_of_as_many_and_dead_slots_are_skipped() -> None:
    cost = changes_vs_append(20_000, 8)
    assert cost["sync"]["catalog_rows"] == cost["changed"] + cost["deleted"]
    assert cost["sync"]["bytes_written"] <= 1.3 * cost["append"]["bytes_written"]
    dead = dead_search(5_000, 8)
    assert (dead["live"], dead["dead"]) == (4_500, 500)
