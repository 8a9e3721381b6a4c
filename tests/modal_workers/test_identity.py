"""Model identity by weights (issue 12 / issue 13 item 12): describe() carries model_digest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from modal_workers.embedders import load_embedder
from modal_workers.identity import folder_digest, hub_revision, model_digest
from tests.support.tiny_clip import build_tiny_clip


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return build_tiny_clip(root / "seed0", seed=0), build_tiny_clip(root / "seed1", seed=1)


def test_new_weights_at_the_same_path_give_a_new_digest(
    two_checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = two_checkpoints
    model = tmp_path / "models" / "clip"
    shutil.copytree(first, model)
    before = load_embedder("clip", str(model), device="cpu").describe()
    shutil.rmtree(model)
    shutil.copytree(second, model)  # same path string, other weights
    after = load_embedder("clip", str(model), device="cpu").describe()
    assert before["model"] == after["model"] == str(model)
    assert before["model_digest"] != after["model_digest"]
    assert before["model_digest"].startswith("xxh3-128:")
    assert set(before) == {"embedder", "model", "dims", "model_digest"}


def test_relative_and_absolute_spellings_give_the_same_digest(
    two_checkpoints: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "m"
    shutil.copytree(two_checkpoints[0], model)
    absolute = load_embedder("clip", str(model), device="cpu").describe()["model_digest"]
    monkeypatch.chdir(tmp_path)
    relative = load_embedder("clip", "m", device="cpu").describe()["model_digest"]
    dotted = load_embedder("clip", "./m/../m", device="cpu").describe()["model_digest"]
    assert absolute == relative == dotted
    assert absolute == folder_digest(two_checkpoints[0])  # the copy is the same checkpoint


def test_one_changed_byte_in_the_weights_changes_the_digest(
    two_checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    model = shutil.copytree(two_checkpoints[0], tmp_path / "m")
    weights = next(model.glob("*.safetensors"))
    before = folder_digest(model)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the last byte is tensor data, not the safetensors header
    weights.write_bytes(bytes(data))
    changed = folder_digest(model)
    assert changed != before
    (model / "README.md").write_text("notes do not change the vectors")
    assert folder_digest(model) == changed
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert folder_digest(model) == before


def test_a_hub_id_is_identified_by_its_cached_snapshot_commit(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someorg--somemodel"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert hub_revision("someorg/somemodel", cache_dir=tmp_path) == commit
    assert model_digest("someorg/somemodel", cache_dir=tmp_path) == f"hf:someorg/somemodel@{commit}"
    assert hub_revision("someorg/other", cache_dir=tmp_path) is None
    assert model_digest("someorg/other", cache_dir=tmp_path) == "unverified:someorg/other"


def test_the_weight_free_embedder_is_identified_by_its_version() -> None:
    described = load_embedder("histogram").describe()
    assert described["model_digest"] == described["model"] == "histogram-v1"
