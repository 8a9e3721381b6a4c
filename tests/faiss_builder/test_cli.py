"""The faiss-builder CLI as a user runs it: build, status, check, search, exit codes and messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faiss_builder.cli import app
from faiss_builder.demo import make_demo_catalog
from faiss_builder.errors import EXIT_BUSY, EXIT_CHECK_FAILED, EXIT_CONFIG, EXIT_STATE
from sharding.lease import StoreLease
from sharding.local_store import LocalStore

PRODUCTS = 20


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo catalog plus one product whose 'image' is a text file."""
    folder = tmp_path_factory.mktemp("cli-catalog")
    path, _ = make_demo_catalog(folder, PRODUCTS)
    (folder / "images" / "broken.jpg").write_text("this is not an image")
    with path.open("a") as handle:
        handle.write(f"{PRODUCTS + 1},images/broken.jpg,Broken Brand\n")
    return path


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def built_store(
    prefect_api: object, catalog: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    store = tmp_path_factory.mktemp("cli-store")
    code, out, err = _run(
        "build", "--store", str(store), "--catalog", str(catalog), "--embedder", "histogram",
        "--batch-size", "8", "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["products"] == PRODUCTS + 1 and summary["failed"] == 1
    assert summary["total_vectors"] == {"color": 20, "structure": 20, "combined": 20}
    return store


def test_status_lists_the_failed_product_with_its_reason(built_store: Path) -> None:
    code, out, _ = _run("status", "--store", str(built_store), "--failed", "--json")
    status = json.loads(out)
    assert code == 0 and status["failed_count"] == 1
    assert status["failures"][0]["id"] == PRODUCTS + 1
    assert status["failures"][0]["reason"]
    assert status["kinds"]["color"]["vectors"] == PRODUCTS
    code, text, _ = _run("status", "--store", str(built_store), "--failed")
    assert "failed products: 1" in text and str(PRODUCTS + 1) in text


def test_check_passes_and_search_by_id_finds_itself_first(built_store: Path, catalog: Path) -> None:
    code, out, _ = _run(
        "check", "--store", str(built_store), "--catalog", str(catalog), "--sample", "4", "--json"
    )
    assert code == 0 and json.loads(out)["ok"] is True
    code, out, _ = _run("search", "--store", str(built_store), "--id", "5", "-k", "3", "--json",
                        "--catalog", str(catalog), "--kind", "structure")  # fmt: skip
    hits = json.loads(out)["hits"]
    assert code == 0 and hits[0]["id"] == 5 and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["brand"] is not None and len(hits) == 3


def test_search_by_image_embeds_with_the_index_embedder(built_store: Path, catalog: Path) -> None:
    image = catalog.parent / "images" / "00007.jpg"
    code, out, _ = _run("search", "--store", str(built_store), "--image", str(image), "--json")
    result = json.loads(out)
    assert code == 0 and result["hits"][0]["id"] == 7
    assert result["embedder"].startswith("histogram")


def test_check_fails_with_exit_1_on_a_damaged_shard(
    built_store: Path, catalog: Path, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for item in built_store.iterdir():
        (damaged / item.name).write_bytes(item.read_bytes())
    shard = damaged / "clip_color_shard_00001.index"
    data = bytearray(shard.read_bytes())
    data[-8:] = bytes(byte ^ 0xFF for byte in data[-8:])
    shard.write_bytes(bytes(data))
    code, out, _ = _run("check", "--store", str(damaged), "--catalog", str(catalog))
    assert code == EXIT_CHECK_FAILED
    assert "FAIL" in out and "clip_color_shard_00001.index" in out


def test_resume_with_another_embedder_is_refused_and_writes_nothing(
    built_store: Path, catalog: Path, tiny_clip_dir: Path, prefect_api: object
) -> None:
    """Run as a user would, in a fresh process: exit 4 and exactly one line on stderr."""
    before = {p.name: p.read_bytes() for p in built_store.iterdir()}
    result = subprocess.run(
        [str(Path(sys.executable).with_name("faiss-builder")), "build", "--store", str(built_store),
         "--catalog", str(catalog), "--embedder", "clip", "--model", str(tiny_clip_dir)],
        env={**os.environ, "PREFECT_API_URL": str(prefect_api)},
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == EXIT_STATE
    assert result.stderr.startswith("faiss-builder: error: refusing to resume")
    assert result.stderr.count("\n") == 1 and "model 'histogram-v1'" in result.stderr
    assert result.stdout == ""
    assert {p.name: p.read_bytes() for p in built_store.iterdir()} == before


def test_a_held_lease_exits_5_and_bad_configuration_exits_2(
    catalog: Path, tmp_path: Path, prefect_api: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    monkeypatch.delenv("SUPABASE_KEY", raising=False)
    store = tmp_path / "store"
    lease = StoreLease.acquire(LocalStore(store), "other-run", ttl_s=60)
    try:
        code, _, err = _run("build", "--store", str(store), "--catalog", str(catalog),
                            "--embedder", "histogram")  # fmt: skip
    finally:
        lease.release()
    assert code == EXIT_BUSY and "other-run" in err
    code, _, err = _run(
        "build", "--store", str(store), "--catalog", str(catalog), "--kinds", "shape"
    )
    assert code == EXIT_CONFIG and "shape" in err
    code, _, err = _run("status", "--store", "supabase")
    assert code == EXIT_CONFIG and "SUPABASE_URL" in err
    assert not (store / "progress.json").exists()


def test_modal_backend_without_credentials_fails_at_once_with_the_fix(
    catalog: Path, tmp_path: Path, prefect_api: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    monkeypatch.setenv("HOME", str(tmp_path))
    store = tmp_path / "store"
    code, _, err = _run("build", "--store", str(store), "--catalog", str(catalog),
                        "--backend", "modal", "--embedder", "histogram")  # fmt: skip
    assert code == EXIT_CONFIG
    assert "modal token new" in err and "modal deploy modal_workers/app.py" in err
    assert not store.exists() or not any(store.iterdir())


def test_retry_failed_indexes_a_product_whose_image_was_fixed(
    built_store: Path, catalog: Path, tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "catalog"
    shutil.copytree(catalog.parent, folder)
    store = tmp_path / "store"
    shutil.copytree(built_store, store)
    shutil.copy(folder / "images" / "00003.jpg", folder / "images" / "broken.jpg")  # fixed now
    code, out, err = _run("build", "--store", str(store), "--catalog", str(folder / "catalog.csv"),
                          "--embedder", "histogram", "--retry-failed", "--json")  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["total_vectors"] == {"color": 21, "structure": 21, "combined": 21}
    code, out, _ = _run("status", "--store", str(store), "--failed", "--json")
    assert json.loads(out)["failed_count"] == 0 and json.loads(out)["failures"] == []
    code, out, _ = _run("check", "--store", str(store), "--catalog", str(folder / "catalog.csv"),
                        "--sample", "0")  # fmt: skip
    assert code == 0, out
    code, out, _ = _run("search", "--store", str(store), "--id", str(PRODUCTS + 1), "--json")
    top = json.loads(out)["hits"][:2]  # product 3 has the very same image: a tie at the top
    assert {hit["id"] for hit in top} == {3, PRODUCTS + 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "999"], "--id 999 is not in the color index"),
        (["--id", "abc"], "this index has integer product ids"),
        (["--id", "5", "--kind", "shape"], "no shape index"),
        (
            ["--image", "/nonexistent/query.jpg"],
            "query image /nonexistent/query.jpg: file_not_found",
        ),
    ],
)
def test_search_mistakes_are_one_line_usage_errors(
    built_store: Path, args: list[str], message: str
) -> None:
    code, out, err = _run("search", "--store", str(built_store), *args)
    assert code == EXIT_CONFIG and out == ""
    assert err.startswith("faiss-builder: error: ") and message in err and err.count("\n") == 1


def test_check_samples_products_indexed_in_only_some_kinds(
    catalog: Path, tmp_path: Path, prefect_api: object
) -> None:
    """Per-kind runs can index a product in color and fail it in structure; check still passes."""
    import shutil

    folder = tmp_path / "catalog"
    shutil.copytree(catalog.parent, folder)
    store, csv = str(tmp_path / "store"), str(folder / "catalog.csv")
    good = folder / "images" / "broken.jpg"
    shutil.copy(folder / "images" / "00004.jpg", good)
    assert _run("build", "--store", store, "--catalog", csv, "--embedder", "histogram",
                "--kinds", "color")[0] == 0  # fmt: skip
    good.write_text("broken again")
    assert _run("build", "--store", store, "--catalog", csv, "--embedder", "histogram",
                "--kinds", "structure")[0] == 0  # fmt: skip
    shutil.copy(folder / "images" / "00004.jpg", good)  # fixed again before the check
    code, out, _ = _run("check", "--store", store, "--catalog", csv, "--sample", "50", "--json")
    result = json.loads(out)
    assert code == 0, result
    checked = {(r["kind"], r["id"]) for r in result["sample"]["results"]}
    assert ("color", PRODUCTS + 1) in checked and ("structure", PRODUCTS + 1) not in checked


def test_read_only_commands_leave_no_trace(tmp_path: Path) -> None:
    missing = tmp_path / "not-a-store"
    code, out, _ = _run("status", "--store", str(missing), "--json")
    assert code == 0 and json.loads(out)["initialised"] is False
    _run("doctor", "--store", str(missing), "--catalog", str(tmp_path / "none.csv"))
    assert not missing.exists()


def test_a_failing_sample_never_shows_pass(
    built_store: Path, catalog: Path, tmp_path: Path
) -> None:
    """The structural report comes first and is fine; the verdict after the sample is FAIL only."""
    moved = tmp_path / "catalog"
    (moved / "images").mkdir(parents=True)
    photos = sorted((catalog.parent / "images").glob("000*.jpg"))
    for photo, other in zip(photos, photos[1:] + photos[:1], strict=True):  # every image swapped
        (moved / "images" / photo.name).write_bytes(other.read_bytes())
    (moved / catalog.name).write_text(catalog.read_text())
    code, out, _ = _run("check", "--store", str(built_store), "--catalog", str(moved / catalog.name),
                        "--sample", "4")  # fmt: skip
    assert code == EXIT_CHECK_FAILED
    assert "PASS" not in out and out.rstrip().endswith("alignment check: FAIL"), out
