"""LocalStore: atomic replace, create-only, listing without temp files, tolerant delete."""

from __future__ import annotations

from pathlib import Path

import pytest

from sharding import LocalStore, ObjectExists, ObjectNotFound, StorageError


def test_put_get_list_delete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("b.json", b"1")
    store.put("a.index", b"2")
    store.put("b.json", b"3")
    assert store.get("b.json") == b"3" and store.list() == ["a.index", "b.json"]
    assert store.list("a") == ["a.index"]
    store.delete(["a.index", "missing"])
    assert store.list() == ["b.json"] and not store.exists("a.index")
    with pytest.raises(ObjectNotFound):
        store.get("a.index")


def test_create_only_refuses_existing_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("lease.json", b"mine", overwrite=False)
    with pytest.raises(ObjectExists):
        store.put("lease.json", b"theirs", overwrite=False)
    assert store.get("lease.json") == b"mine"
    assert [p.name for p in tmp_path.iterdir()] == ["lease.json"]


def test_a_failed_write_never_leaves_a_half_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    store.put("progress.json", b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("sharding.local_store.os.replace", boom)
    with pytest.raises(StorageError, match=r"cannot write progress\.json: disk full"):
        store.put("progress.json", b"new-but-never-visible")
    assert store.get("progress.json") == b"old" and store.list() == ["progress.json"]


def test_names_cannot_escape_the_root(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        LocalStore(tmp_path).put("../outside.json", b"x")


def test_read_exact_into_fills_buffers_only_for_the_exact_size(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a.bin", bytes(range(200)))
    head, body = bytearray(7), bytearray(193)
    assert store.read_exact_into("a.bin", [memoryview(head), memoryview(body)])
    assert bytes(head + body) == bytes(range(200))
    assert not store.read_exact_into("a.bin", [memoryview(bytearray(199))])
    assert not store.read_exact_into("a.bin", [memoryview(bytearray(201))])
    with pytest.raises(ObjectNotFound, match=r"missing\.bin"):
        store.read_exact_into("missing.bin", [memoryview(bytearray(1))])
