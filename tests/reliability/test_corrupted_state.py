"""Corrupted state: `check` names the object and the problem, `build` refuses and writes nothing.

A build verifies what it builds on (progress.json, manifest segments, id maps, the open shards),
not every sealed vector file: bit rot inside a sealed shard is `check`'s to find, and a build
leaves that shard exactly as it found it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from faiss_builder.errors import EXIT_CHECK_FAILED, EXIT_STATE
from tests.reliability.harness import run_cli, snapshot

Corruption = Callable[[Path], None]


def _truncate_progress(store: Path) -> None:
    path = store / "progress.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _alter_shard(store: Path) -> None:
    path = store / "clip_color_shard_00001.index"
    data = bytearray(path.read_bytes())
    data[-40:-8] = bytes(b ^ 0xFF for b in data[-40:-8])  # same length: only sha256 can tell
    path.write_bytes(bytes(data))


def _remove_shard(store: Path) -> None:
    (store / "clip_structure_shard_00002.index").unlink()


def _shorten_id_map(store: Path) -> None:
    path = store / "id_map_combined_shard_00001.json"
    path.write_text(json.dumps(json.loads(path.read_text())[:-1]))


# corruption, the object check must name, the problem code it must report, build refuses it
CASES: dict[str, tuple[Corruption, str, str, bool]] = {
    "truncated-progress": (_truncate_progress, "progress.json", "progress_invalid", True),
    "altered-shard": (_alter_shard, "clip_color_shard_00001.index", "sha256_mismatch", False),
    "missing-shard": (_remove_shard, "clip_structure_shard_00002.index", "missing_object", True),
    "short-id-map": (_shorten_id_map, "id_map_combined_shard_00001.json", "sha256_mismatch", True),
}


@pytest.fixture(scope="module")
def partial_store(
    prefect_api: object, small_catalog: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A committed store of the first SMALL products: the full catalog still has work left."""
    from tests.reliability.harness import cli_env

    work = tmp_path_factory.mktemp("partial")
    store = work / "store"
    env = cli_env(prefect_api, work / "prefect")
    result = run_cli(["build", "--store", str(store), "--catalog", str(small_catalog)], env, work)
    assert result.code == 0, result.stderr
    return store


@pytest.mark.parametrize("case", list(CASES))
def test_check_names_the_damage_and_build_refuses_without_writing(
    case: str,
    partial_store: Path,
    catalog: Path,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    corrupt, name, code, refused = CASES[case]
    store = tmp_path / "store"
    shutil.copytree(partial_store, store)
    corrupt(store)
    before = snapshot(store)

    checked = run_cli(["check", "--store", str(store), "--sample", "0", "--json"], env, tmp_path)
    assert checked.code == EXIT_CHECK_FAILED, checked.stdout + checked.stderr
    problems = json.loads(checked.stdout)["store"]["problems"]
    assert any(p["code"] == code and name in p["message"] for p in problems), problems

    built = run_cli(["build", "--store", str(store), "--catalog", str(catalog)], env, tmp_path)
    if not refused:  # a sealed shard the run does not build on: untouched, still reported
        assert built.code == 0, built.stderr
        assert snapshot(store)[name] == before[name]
        again = run_cli(["check", "--store", str(store), "--sample", "0"], env, tmp_path)
        assert again.code == EXIT_CHECK_FAILED and name in again.stdout, again.stdout
        return
    assert built.code == EXIT_STATE, built.stderr
    lines = built.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("faiss-builder: error:"), built.stderr
    assert name in lines[0], lines[0]
    assert snapshot(store) == before, "a refused build changed the store"
