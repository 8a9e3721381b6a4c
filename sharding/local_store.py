"""A store in a local folder: atomic writes (temp file + os.replace), create-only via os.link."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sharding.errors import ObjectExists, ObjectNotFound, StorageError

_TEMP_PREFIX = ".tmp-"
#: Mode of the files the store creates: readable by the other tools and users that serve the
#: index (mkstemp's 0600 made a store built by one user unreadable to the service reading it).
FILE_MODE = 0o644


class LocalStore:
    """Objects are files under `root`; a reader never sees half a file.

    Every failure of the file system (disk full, read-only, permission denied, a path that is a
    file) is a StorageError with one line naming the object and the kernel's answer, and a failed
    write leaves no temp file behind.
    """

    def __init__(self, root: Path | str) -> None:
        # Created on the first write only: status, check and doctor must leave no trace.
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StorageError(f"invalid object name {name!r}")
        return self.root.joinpath(*parts)

    def put(
        self, name: str, data: bytes, *, overwrite: bool = True, immutable: bool = False
    ) -> None:
        # `immutable` only matters to stores behind a CDN; a local file is always read fresh.
        target = self._path(name)
        try:
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
        except OSError as exc:
            raise self._os_error("cannot write", name, exc) from exc

    @staticmethod
    def _write_temp(directory: Path, data: bytes) -> str:
        fd, temp = tempfile.mkstemp(dir=directory, prefix=_TEMP_PREFIX)
        try:
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view) :]
            # Durable before it becomes visible: a power loss must not leave a named, empty file.
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)  # a disk-full write must not leak its temp file
            raise
        os.close(fd)
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
        except OSError as exc:
            raise self._os_error("cannot read", name, exc) from exc

    def read_exact_into(self, name: str, buffers: Sequence[memoryview]) -> bool:
        try:
            return read_file_into(self._path(name), buffers)
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"{name} not found in {self.root}") from exc
        except OSError as exc:
            raise self._os_error("cannot read", name, exc) from exc

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def list(self, prefix: str = "") -> list[str]:
        try:
            names = [
                path.relative_to(self.root).as_posix()
                for path in self.root.rglob("*")
                if path.is_file() and not path.name.startswith(_TEMP_PREFIX)
            ]
        except OSError as exc:
            raise self._os_error("cannot list", "objects", exc) from exc
        return sorted(name for name in names if name.startswith(prefix))

    def delete(self, names: Sequence[str]) -> None:
        for name in names:
            try:
                self._path(name).unlink(missing_ok=True)
            except OSError as exc:
                raise self._os_error("cannot delete", name, exc) from exc

    def describe(self) -> str:
        return f"local folder {self.root}"

    def check_writable(self) -> str:
        """Prove the store can take a write, leaving no trace; StorageError (one line) if not.

        Writes, fsyncs and removes a small temp file in the store's folder, or, while the folder
        does not exist yet, in the nearest existing folder above it (the folder itself is
        created only by the first real write). Returns a one-line description of what was tried.
        """
        folder = self.root
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise StorageError(f"{self.describe()}: {folder} is not a folder")
        try:
            temp = self._write_temp(folder, b"faiss-builder write probe\n")
            os.unlink(temp)
        except OSError as exc:
            raise self._os_error("is not writable", f"(probe in {folder})", exc) from exc
        where = "" if folder == self.root else f" (created on the first write, under {folder})"
        return f"{self.describe()} is writable{where}"

    def _os_error(self, doing: str, name: str, exc: OSError) -> StorageError:
        code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        reason = exc.strerror or str(exc) or type(exc).__name__
        return StorageError(f"{self.describe()}: {doing} {name}: {reason} ({code})")


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
