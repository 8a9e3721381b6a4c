"""LocalStore on a full or read-only disk: one-line StorageError, no temp file left, a probe for
doctor; files are created 0644."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sharding.errors import StorageError
from sharding.local_store import LocalStore


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".tmp-*")]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO])
def test_a_failing_write_is_one_storage_error_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """The kernel's answer is simulated at os.write (the tests run as root, which chmod cannot
    stop); the real disk-full and read-only answers are the namespace test below."""
    store = LocalStore(tmp_path)
    store.put("progress.json", b"old")

    def refuse(fd: int, data: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("sharding.local_store.os.write", refuse)
    with pytest.raises(StorageError) as refused:
        store.put("progress.json", b"new" * 1000)
    message = str(refused.value)
    assert message == (
        f"local folder {tmp_path}: cannot write progress.json: {os.strerror(code)} "
        f"({errno.errorcode[code]})"
    )
    assert _temps(tmp_path) == [] and store.get("progress.json") == b"old"


def test_a_failing_fsync_or_link_leaves_no_temp_file_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path)
    monkeypatch.setattr(
        "sharding.local_store.os.fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "EIO"))
    )
    with pytest.raises(StorageError, match=r"cannot write a\.json: EIO \(EIO\)"):
        store.put("a.json", b"x")
    monkeypatch.undo()
    monkeypatch.setattr(
        "sharding.local_store.os.link",
        lambda a, b: (_ for _ in ()).throw(OSError(errno.EPERM, "no hard links here")),
    )
    with pytest.raises(StorageError, match=r"cannot write lease\.json: no hard links here"):
        store.put("lease.json", b"x", overwrite=False)
    assert _temps(tmp_path) == [] and store.list() == []


def test_store_files_are_created_0644(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("progress.json", b"{}")
    store.put("lease.json", b"{}", overwrite=False)
    for name in ("progress.json", "lease.json"):
        assert stat.S_IMODE((tmp_path / "store" / name).stat().st_mode) == 0o644


def test_check_writable_leaves_no_trace_and_names_what_is_wrong(tmp_path: Path) -> None:
    fresh = LocalStore(tmp_path / "not" / "yet")
    assert "is writable" in fresh.check_writable()
    assert not (tmp_path / "not").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError, match="is not a folder"):
        LocalStore(tmp_path / "a-file" / "store").check_writable()
    with pytest.raises(StorageError, match=r"cannot write progress\.json: Not a directory"):
        LocalStore(tmp_path / "a-file" / "store").put("progress.json", b"{}")


_IN_NAMESPACE = textwrap.dedent(
    """
    import json, os, subprocess, sys
    folder = sys.argv[1]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder], check=True)
    from sharding.errors import StorageError
    from sharding.local_store import LocalStore
    store, out = LocalStore(folder), {}
    store.put("progress.json", b"old")
    def attempt(key, call):
        try:
            call()
            out[key] = "ok"
        except StorageError as exc:
            out[key] = str(exc)
    attempt("full", lambda: store.put("progress.json", b"x" * 1_000_000))
    out["after_full"] = sorted(os.listdir(folder))
    out["kept"] = store.get("progress.json").decode()
    subprocess.run(["mount", "-o", "remount,ro", folder], check=True)
    attempt("read_only", lambda: store.put("progress.json", b"new"))
    attempt("probe", store.check_writable)
    out["after_ro"] = sorted(os.listdir(folder))
    print(json.dumps(out))
    """
)


def test_a_real_full_disk_and_a_real_read_only_mount(tmp_path: Path) -> None:
    """A 64 KiB tmpfs in a user + mount namespace (no privilege needed where they are allowed)."""
    unshare = shutil.which("unshare")
    folder = tmp_path / "mnt"
    folder.mkdir()
    if unshare is None or subprocess.run([unshare, "-rm", "true"], check=False).returncode:
        pytest.skip("user and mount namespaces are not available here")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [unshare, "-rm", sys.executable, "-c", _IN_NAMESPACE, str(folder)],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=60,
        check=False,
    )
    if done.returncode and "mount" in done.stderr and "permission denied" in done.stderr.lower():
        pytest.skip(f"tmpfs mounts are refused here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["full"].endswith("cannot write progress.json: No space left on device (ENOSPC)")
    assert out["after_full"] == ["progress.json"] and out["kept"] == "old"
    assert out["read_only"].endswith("Read-only file system (EROFS)")
    assert "is not writable" in out["probe"] and "EROFS" in out["probe"]
    assert out["after_ro"] == ["progress.json"]
