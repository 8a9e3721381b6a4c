"""Drives the real `faiss-builder` CLI as subprocesses and compares stores with a clean build."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sharding.checks import check_store
from sharding.loader import load_index
from sharding.storage import Storage

CLI = str(Path(sys.executable).parent / "faiss-builder")
KINDS = ("color", "structure", "combined")
# Settings every reliability run shares: small shards so a few hundred products seal several.
BASE_SETTINGS = {
    "FAISS_BUILDER_EMBEDDER": "histogram",
    "FAISS_BUILDER_BATCH_SIZE": "16",
    "FAISS_BUILDER_SHARD_MAX_VECTORS": "25",
    "FAISS_BUILDER_LEASE_TTL_S": "3",
    "FAISS_BUILDER_LEASE_WAIT_S": "10",
}
_DROPPED_PREFIXES = ("FAISS_BUILDER_", "SUPABASE_", "MODAL_")

Contents = dict[str, tuple[list[object], np.ndarray]]


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> dict[str, object]:
        return dict(json.loads(self.stdout.strip().splitlines()[-1]))


def cli_env(prefect_api: object, home: Path, **settings: str) -> dict[str, str]:
    """A clean environment: this session's Prefect server, a private PREFECT_HOME, no stray keys."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES)}
    env.update(BASE_SETTINGS)
    env.update(
        PREFECT_API_URL=str(prefect_api), PREFECT_HOME=str(home), PYTHONUNBUFFERED="1", **settings
    )
    return env


class Build:
    """A CLI subprocess in its own session, so a SIGKILL takes its whole process group."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [CLI, *args],
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> bool:
        """SIGKILL the process group; True when it was still running (a kill that landed)."""
        landed = self.running()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate()
        return landed

    def wait(self, timeout: float = 180) -> Result:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return Result(self.proc.returncode, out, err, time.monotonic() - self.started)

    def wait_or_kill(self, timeout: float) -> Result:
        """Wait up to `timeout`, then SIGKILL; the output so far either way (code -9 if killed)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
        return Result(self.proc.returncode, out, err, time.monotonic() - self.started)


def run_cli(args: Sequence[str], env: Mapping[str, str], cwd: Path, timeout: float = 180) -> Result:
    return Build(args, env, cwd).wait(timeout)


def contents(storage: Storage, kinds: Sequence[str] = KINDS) -> Contents:
    """Ids (in index order) and vectors of every kind, as the loader sees them."""
    out: Contents = {}
    for kind in kinds:
        index = load_index(storage, kind)
        ids = list(index.ids)
        vectors = np.vstack([index.vector(pid) for pid in ids]) if ids else np.zeros((0, 0))
        out[kind] = (ids, vectors)
    return out


def assert_same_as_clean(storage: Storage, clean: Contents, upto: int | None = None) -> None:
    """Same ids per kind (those <= upto), no duplicates, vectors equal within tolerance, check ok."""
    report = check_store(storage)
    assert report.ok, report.to_markdown()
    got = contents(storage, list(clean))
    for kind, (all_ids, all_vectors) in clean.items():
        keep = [i for i, pid in enumerate(all_ids) if upto is None or int(str(pid)) <= upto]
        ids, vectors = [all_ids[i] for i in keep], all_vectors[keep]
        got_ids, got_vectors = got[kind]
        duplicates = [pid for pid, n in Counter(got_ids).items() if n > 1]
        assert not duplicates, f"{kind}: duplicated ids {duplicates[:10]}"
        assert sorted(got_ids, key=str) == sorted(ids, key=str), f"{kind}: ids differ"
        order = {pid: i for i, pid in enumerate(got_ids)}
        aligned = got_vectors[[order[pid] for pid in ids]]
        np.testing.assert_allclose(aligned, vectors, atol=1e-5, err_msg=f"{kind} vectors differ")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under a folder, by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def lease_holder(read: object) -> str | None:
    """run_id in lease.json bytes (or None when there is none)."""
    if not isinstance(read, bytes | bytearray):
        return None
    try:
        return str(json.loads(read)["run_id"])
    except (ValueError, KeyError):
        return None


def wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def wait_for_new_holder(
    build: Build, holder: Callable[[], str | None], previous: str | None, timeout: float = 60
) -> bool:
    """Until the run holds the lease (taking the dead run's over) or has exited."""
    return wait_until(lambda: not build.running() or holder() not in (None, previous), timeout)


def run_for(build: Build, seconds: float) -> None:
    """Let the build run `seconds` more (or until it exits)."""
    wait_until(lambda: not build.running(), seconds)


def store_holder(store: Path) -> str | None:
    """run_id of the lease a local store's lease.json holds now (None: no lease)."""
    try:
        return lease_holder((store / "lease.json").read_bytes())
    except FileNotFoundError:
        return None
