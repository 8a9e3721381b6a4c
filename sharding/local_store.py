"""A store in a local folder: atomic writes (temp file + os.replace), create-only via os.link."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sharding.errors import ObjectExists, ObjectNotFound, StorageError

_TEMP_PREFIX = ".tmp-"


class LocalStore:
    """Objects are files under `root`; a reader never sees half a file."""

    def __init__(self, root: Path | str) -> None:
        # Created on the first write only: status, check and doctor must leave no trace.
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"invalid object name {name!r}")
        return self.root.joinpath(*parts)

    def put(self, name: str, data: bytes, *, overwrite: bool = True) -> None:
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = self._write_temp(target.parent, data)
        try:
            if overwrite:
                os.replace(temp, target)
            else:
                self._link_new(temp, target, name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    @staticmethod
    def _write_temp(directory: Path, data: bytes) -> str:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            # Durable before it becomes visible: a power loss must not leave a named, empty file.
            os.fsync(handle.fileno())
        return temp

    @staticmethod
    def _link_new(temp: str, target: Path, name: str) -> None:
        # link() fails if the target exists: the atomic create-only that leases rely on.
        try:
            os.link(temp, target)
        except FileExistsError as exc:
            raise ObjectExists(f"{name} already exists") from exc

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"{name} not found in {self.root}") from exc

    def read_exact_into(self, name: str, buffers: Sequence[memoryview]) -> bool:
        try:
            return read_file_into(self._path(name), buffers)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"{name} not found in {self.root}") from exc

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> list[str]:
        names = (
            path.relative_to(self.root).as_posix()
            for path in self.root.rglob("*")
            if path.is_file() and not path.name.startswith(_TEMP_PREFIX)
        )
        return sorted(name for name in names if name.startswith(prefix))

    def delete(self, names: Sequence[str]) -> None:
        for name in names:
            self._path(name).unlink(missing_ok=True)

    def describe(self) -> str:
        return f"local folder {self.root}"


def read_file_into(path: Path, buffers: Sequence[memoryview]) -> bool:
    """Fill byte `buffers`, in order, with a file's bytes if its size is exactly their total size.

    False when the size differs, before or while reading (the buffers may then hold anything).
    The bytes go from the page cache straight into the caller's memory: os.readv, no copy.
    """
    pending = [b for b in buffers if b.nbytes]
    with open(path, "rb", buffering=0) as handle:
        if os.fstat(handle.fileno()).st_size != sum(b.nbytes for b in pending):
            return False
        while pending:
            count = os.readv(handle.fileno(), pending)
            if count == 0:
                return False  # the file was cut while we read it
            while pending and count >= pending[0].nbytes:
                count -= pending.pop(0).nbytes
            if count:
                pending[0] = pending[0][count:]
    return True
