"""bench.sync_cost at a small size: a sync with nothing changed reads one empty page and writes
nothing; a sync of changes costs about what appending as many products does; the bench prints
one JSON object that `python -m bench` turns into table rows."""

from __future__ import annotations

import json

import pytest

from bench.__main__ import _sync_rows
from bench.sync_cost import changes_vs_append, dead_search, main, no_change


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


def test_main_prints_one_json_object_with_the_three_ratios(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["--sizes", "1000,5000", "--dim", "8"])
    lines = capsys.readouterr().out.splitlines()
    report = json.loads(lines[0])
    assert report["bench"] == "sync_cost" and report["sizes"] == [1000, 5000]
    assert report["no_change_ratio"] == 1.0 and report["no_change_shards_written"] == 0
    assert report["changes"]["changed"] == 50 and report["changes"]["deleted"] == 5
    assert 0 < report["changes_ratio"] <= 1.3 and report["dead_search_ratio"] > 0
    assert isinstance(report["goal_met"], bool) and lines[1].startswith("sync_cost: ")
    rows = _sync_rows(report)
    assert [row[0] for row in rows] == [
        "11 catalog sync, nothing changed",
        "11 sync 1% changed + 0.1% deleted / append",
        "11 search 10% dead / compacted",
    ]
    assert rows[0][3] is True and rows[1][3] is True
