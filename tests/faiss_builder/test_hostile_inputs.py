"""Hostile inputs and unlucky operators through the real `faiss-builder` (issue 13).

Every case runs the installed console script in a fresh process, as a user would, and asserts
the exit code README documents and that stderr is exactly one line without a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from faiss_builder.demo import make_demo_catalog
from faiss_builder.errors import (
    EXIT_CHECK_FAILED,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_STATE,
    EXIT_STORAGE,
)
from tests.support.postgrest_stack import free_port

CLI = str(Path(sys.executable).with_name("faiss-builder"))
SECRET_KEY = "sentinel-key-ß-do-not-print"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Result:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SUPABASE_", "FAISS_BUILDER_", "MODAL_"))
    }
    result = subprocess.run(
        [CLI, *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(result.returncode, result.stdout, result.stderr)


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def one_line_error(self, code: int, *needles: str) -> bool:
        """Exit `code`, and stderr is one `faiss-builder: error:` line holding every needle."""
        assert self.code == code, (self.code, self.err[-3000:])
        assert "Traceback" not in self.err, self.err[-3000:]
        assert self.err.count("\n") == 1, self.err[-3000:]
        assert self.err.startswith("faiss-builder: error: "), self.err
        missing = [needle for needle in needles if needle not in self.err]
        assert not missing, (missing, self.err)
        return True


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with images/00001.jpg ... 00012.jpg (demo photographs)."""
    folder = tmp_path_factory.mktemp("hostile-images")
    make_demo_catalog(folder, 12)
    return folder


def _catalog(folder: Path, images: Path, rows: list[str], name: str = "catalog.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "images").exists():
        shutil.copytree(images / "images", folder / "images")
    path = folder / name
    path.write_text("\n".join(["id,image_url,brand", *rows]) + "\n")
    return path


def _build(store: Path, catalog: Path, prefect: object, *extra: str, **env: str) -> Result:
    return cli(
        "build", "--store", str(store), "--catalog", str(catalog), "--embedder", "histogram",
        "--kinds", "color", *extra,
        env={"PREFECT_API_URL": str(prefect), **env},
    )  # fmt: skip


def _files(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.iterdir()) if p.is_file()}


# --- item 4: rows the cursor makes unreachable are counted and reported ------------------------


def test_string_ids_appended_after_p9_are_reported_by_status(
    images: Path, tmp_path: Path, prefect_api: object
) -> None:
    rows = [f"P{i},images/{i:05d}.jpg,b" for i in range(1, 10)]
    catalog, store = _catalog(tmp_path / "cat", images, rows), tmp_path / "store"
    assert _build(store, catalog, prefect_api).code == EXIT_OK
    with catalog.open("a") as handle:  # P10 < P9 as strings: below the cursor, never read
        handle.writelines(f"P{i},images/{i:05d}.jpg,b\n" for i in (10, 11, 12))
    again = _build(store, catalog, prefect_api, "--json")
    assert again.code == EXIT_OK and json.loads(again.out)["products"] == 0
    assert json.loads(again.out)["unindexed_below_cursor"] == {"color": 3}  # the build says so too
    status = cli("status", "--store", str(store), "--catalog", str(catalog), "--json")
    assert status.code == EXIT_OK, status.err
    result = json.loads(status.out)
    assert result["unindexed_below_cursor"] == {"color": 3}
    assert result["warnings"] == [
        "3 catalog rows sort at or below the cursor but were never indexed "
        "(color 3; ids must be ascending for new rows: see README, The catalog)"
    ]
    text = cli("status", "--store", str(store), "--catalog", str(catalog))
    assert "warning: 3 catalog rows sort at or below the cursor" in text.out


# --- item 20: one line and README's exit code, never a traceback ------------------------------


def test_an_integer_catalog_on_a_string_store_is_refused_with_exit_4(
    images: Path, tmp_path: Path, prefect_api: object
) -> None:
    strings = _catalog(tmp_path / "s", images, [f"P{i},images/{i:05d}.jpg,b" for i in (1, 2)])
    store = tmp_path / "store"
    assert _build(store, strings, prefect_api).code == EXIT_OK
    before = _files(store)
    ints = _catalog(tmp_path / "i", images, [f"{i},images/{i:05d}.jpg,b" for i in (1, 2, 3)])
    result = _build(store, ints, prefect_api)
    assert result.one_line_error(EXIT_STATE, "integer ids", "cursor 'P2' is a string")
    assert _files(store) == before
    status = cli("status", "--store", str(store), "--catalog", str(ints))
    assert status.one_line_error(EXIT_STATE, "cursor 'P2' is a string")


@pytest.mark.parametrize(
    ("name", "body", "needles"),
    [
        ("catalog.csv", "id,image_url,brand\n" + "9" * 5000 + ",a.jpg,x\n",
         ["line 2", "integer id of 5000 digits is outside int64/uint64"]),
        ("catalog.jsonl", '{"id": ' + "7" * 5000 + ', "image_url": "a.jpg"}\n',
         ["line 1", "integer id of 5000 digits"]),
        ("catalog.jsonl", '{"id": 18446744073709551616, "image_url": "a.jpg"}\n',
         ["line 1", "outside int64/uint64"]),
        ("catalog.jsonl",
         '{"id": 1, "image_url": "a.jpg"}\n{"id": 2, "image_url": "b.jpg", "x": '
         + "[" * 100_000 + "]" * 100_000 + "}\n",
         ["line 2", "JSON nested deeper than 32 levels"]),
        ("catalog.jsonl", '{"id": {"a": 1}, "image_url": "a.jpg"}\n', ["line 1", "id is an object"]),
        ("catalog.csv", "id,image_url,brand\n7,a.jpg,x\n007,b.jpg,x\n",
         ["mixes integer and string ids (line 2: 7, line 3: '007')"]),
        ("catalog.csv", "id,image_url,brand\n1,a.jpg,x\n ,b.jpg,x\n", ["line 3: id is empty"]),
    ],
)  # fmt: skip
def test_catalog_ids_that_cannot_be_kept_exit_2_naming_the_line(
    tmp_path: Path, prefect_api: object, name: str, body: str, needles: list[str]
) -> None:
    catalog = tmp_path / name
    catalog.write_text(body)
    result = _build(tmp_path / "store", catalog, prefect_api)
    assert result.one_line_error(EXIT_CONFIG, str(catalog), *needles)
    assert not (tmp_path / "store").exists()


def test_shard_max_bytes_below_one_vector_exits_2(
    images: Path, tmp_path: Path, prefect_api: object
) -> None:
    catalog = _catalog(tmp_path / "cat", images, ["1,images/00001.jpg,b"])
    result = _build(tmp_path / "store", catalog, prefect_api, FAISS_BUILDER_SHARD_MAX_BYTES="10")
    assert result.one_line_error(EXIT_CONFIG, "shard_max_bytes 10 is below one 500-d vector")


@pytest.mark.parametrize("under", [False, True])
def test_a_store_path_that_is_or_lies_under_a_file_exits_2(
    images: Path, tmp_path: Path, prefect_api: object, under: bool
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    store = afile / "sub" if under else afile
    catalog = _catalog(tmp_path / "cat", images, ["1,images/00001.jpg,b"])
    for result in (
        _build(store, catalog, prefect_api),
        cli("status", "--store", str(store)),
        cli("check", "--store", str(store)),
    ):
        assert result.one_line_error(EXIT_CONFIG, f"store {store}", "a file, not a folder")
    assert afile.read_text() == "not a folder"


def test_an_empty_store_name_is_refused_not_the_current_folder(tmp_path: Path) -> None:
    for args in (["status", "--store", ""], ["status", "--store", "  "]):
        result = cli(*args)
        assert result.one_line_error(EXIT_CONFIG, "FAISS_BUILDER_STORE is empty")


def test_a_folder_at_the_next_shard_name_exits_3(
    images: Path, tmp_path: Path, prefect_api: object
) -> None:
    rows = [f"{i},images/{i:05d}.jpg,b" for i in range(1, 9)]
    catalog, store = _catalog(tmp_path / "cat", images, rows), tmp_path / "store"
    small = {"FAISS_BUILDER_SHARD_MAX_VECTORS": "4"}
    assert _build(store, catalog, prefect_api, "--max-images", "4", **small).code == EXIT_OK
    (store / "clip_color_shard_00002.index").mkdir()
    # --json: no progress bar, which (on a stderr that is not a terminal) prints its last state.
    result = _build(store, catalog, prefect_api, "--json", **small)
    assert result.one_line_error(EXIT_STORAGE, "clip_color_shard_00002.index")


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"SUPABASE_URL": "http://127.0.0.1:9", "SUPABASE_KEY": SECRET_KEY},
         ["SUPABASE_KEY holds a non-ASCII"]),
        ({"SUPABASE_URL": "not a url", "SUPABASE_KEY": "k"}, ["SUPABASE_URL 'not a url'"]),
        ({"SUPABASE_URL": "https://", "SUPABASE_KEY": "k"}, ["is not a valid URL"]),
        ({"SUPABASE_URL": "https://x.supabase.co:99999", "SUPABASE_KEY": "k"},
         ["is not a valid URL"]),
    ],
)  # fmt: skip
def test_bad_supabase_settings_exit_2_without_the_key(
    tmp_path: Path, env: dict[str, str], needles: list[str]
) -> None:
    for args in (["status", "--store", "supabase"], ["check", "--store", "supabase"]):
        result = cli(*args, env=env)
        assert result.one_line_error(EXIT_CONFIG, *needles)
        assert SECRET_KEY not in result.err + result.out
    doctor = cli("doctor", "--store", "supabase", "--catalog", "supabase", env=env)
    assert doctor.code == EXIT_CHECK_FAILED and "Traceback" not in doctor.err
    assert all(needle in doctor.out for needle in needles), doctor.out
    assert SECRET_KEY not in doctor.err + doctor.out


# --- item 19: an unreachable Supabase catalog is a storage failure (3), not configuration -----


def test_an_unreachable_supabase_catalog_exits_3(tmp_path: Path, prefect_api: object) -> None:
    env = {"SUPABASE_URL": f"http://127.0.0.1:{free_port()}", "SUPABASE_KEY": "a.b.c"}
    result = _build(tmp_path / "store", Path("supabase"), prefect_api, **env)
    assert result.one_line_error(EXIT_STORAGE, "cannot reach Supabase", "product_images")


# --- item 19: doctor and build agree on Modal credentials --------------------------------------


def _modal_toml(path: Path) -> Path:
    path.write_text('[me]\ntoken_id = "ak-file-id"\ntoken_secret = "as-file"\nactive = true\n')
    return path


def test_doctor_reads_modal_credentials_where_build_does(tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    store, catalog = str(tmp_path / "store"), str(tmp_path / "none.csv")
    args = ("doctor", "--store", store, "--catalog", catalog, "--backend", "modal", "--json")
    # A token only in ~/.modal.toml while MODAL_CONFIG_PATH names another (absent) file: the
    # build's modal.config reads MODAL_CONFIG_PATH and finds nothing, so doctor must say so.
    _modal_toml(home / ".modal.toml")
    env = {"HOME": str(home), "MODAL_CONFIG_PATH": str(elsewhere / "modal.toml")}
    checks = {c["name"]: c for c in json.loads(cli(*args, env=env).out)["checks"]}
    assert checks["modal credentials"]["ok"] is False
    assert "modal token new" in checks["modal credentials"]["detail"]
    # The token in MODAL_CONFIG_PATH's file, none in HOME: found, and never shown.
    (home / ".modal.toml").unlink()
    _modal_toml(elsewhere / "modal.toml")
    result = cli(*args, env=env)
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    assert checks["modal credentials"] == {
        "name": "modal credentials",
        "ok": True,
        "detail": f"token in {elsewhere / 'modal.toml'}",
    }
    assert "ak-file-id" not in result.out + result.err and "as-file" not in result.out


# --- item 15: doctor says a read-only store is not writable ------------------------------------


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """A folder nobody can create files in: chattr +i for root (who ignores modes), else 0555."""
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a folder read-only as root here: {done.stderr!r}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def test_doctor_says_a_read_only_store_is_not_writable_and_leaves_nothing(
    images: Path, tmp_path: Path
) -> None:
    catalog = _catalog(tmp_path / "cat", images, ["1,images/00001.jpg,b"])
    store = tmp_path / "store"
    store.mkdir()
    args = ("doctor", "--store", str(store), "--catalog", str(catalog), "--json")
    writable = {c["name"]: c for c in json.loads(cli(*args).out)["checks"]}["store writable"]
    assert writable["ok"] is True and list(store.iterdir()) == []
    with _read_only(store):
        result = cli(*args)
    assert result.code == EXIT_CHECK_FAILED, result.err
    checks = {c["name"]: c for c in json.loads(result.out)["checks"]}
    assert checks["store writable"]["ok"] is False
    assert "not writable" in checks["store writable"]["detail"]
    assert checks["configuration"]["ok"] is True
    assert list(store.iterdir()) == []


# --- item 24: a byte order mark is not part of the first column's name ------------------------


def test_a_csv_saved_with_a_byte_order_mark_builds(
    images: Path, tmp_path: Path, prefect_api: object
) -> None:
    catalog = _catalog(tmp_path / "cat", images, ["1,images/00001.jpg,b", "2,images/00002.jpg,b"])
    catalog.write_bytes(b"\xef\xbb\xbf" + catalog.read_bytes())
    result = _build(tmp_path / "store", catalog, prefect_api, "--json")
    assert result.code == EXIT_OK, result.err
    assert json.loads(result.out)["total_vectors"] == {"color": 2}


# --- item 14: local image paths stay inside the catalog folder unless a root is set -----------


def test_images_outside_the_catalog_folder_need_the_local_image_root_setting(
    images: Path, tmp_path: Path, prefect_api: object
) -> None:
    shared = tmp_path / "shared"
    shutil.copytree(images / "images", shared)
    rows = ["1,images/00001.jpg,b", "2,../shared/00002.jpg,b", f"3,{shared / '00003.jpg'},b"]
    catalog = _catalog(tmp_path / "cat", images, rows)
    confined = _build(tmp_path / "store1", catalog, prefect_api, "--json")
    assert confined.code == EXIT_OK, confined.err
    status = cli("status", "--store", str(tmp_path / "store1"), "--failed", "--json")
    failures = {f["id"]: f["reason"] for f in json.loads(status.out)["failures"]}
    assert failures == {2: "outside_catalog_folder", 3: "outside_catalog_folder"}
    root = {"FAISS_BUILDER_LOCAL_IMAGE_ROOT": str(tmp_path)}
    widened = _build(tmp_path / "store2", catalog, prefect_api, "--json", **root)
    assert widened.code == EXIT_OK, widened.err
    summary = json.loads(widened.out)
    assert summary["failed"] == 0 and summary["total_vectors"] == {"color": 3}
    missing = {"FAISS_BUILDER_LOCAL_IMAGE_ROOT": str(tmp_path / "no-such-folder")}
    refused = _build(tmp_path / "store3", catalog, prefect_api, **missing)
    assert refused.one_line_error(EXIT_CONFIG, "FAISS_BUILDER_LOCAL_IMAGE_ROOT", "is not a folder")
    assert not (tmp_path / "store3").exists()
