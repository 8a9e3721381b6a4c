"""The lease fences every write: a write never lands after our ownership stopped being certain,
however long the Supabase store would otherwise have gone on retrying."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from sharding.errors import FenceExpired, StorageUnavailable
from sharding.lease import LeaseKeeper, StoreLease
from sharding.local_store import LocalStore
from sharding.storage import FencedStorage
from sharding.supabase_store import RetryPolicy, SupabaseStore, create_supabase_client
from tests.support.supabase_storage_server import SupabaseStorageServer

TTL_S = 2.0  # the shortest TTL allowed, against retries that would last far longer
TIMEOUT_S = 0.3


def _patient_store(server: SupabaseStorageServer) -> SupabaseStore:
    """Retries for ~15 s when unfenced: 60 attempts 0.05-0.2 s apart, each up to 0.3 s."""
    client = create_supabase_client(server.url, SecretStr(server.key), timeout_s=TIMEOUT_S)
    return SupabaseStore(client, "faiss", retry=RetryPolicy(attempts=60, base_s=0.05, cap_s=0.2))


def _progress_writes(server: SupabaseStorageServer) -> list[float]:
    return [r.at for r in server.requests if r.path.endswith("/progress.json")]


@pytest.mark.parametrize("fault", ["status", "stall"])
def test_retries_stop_before_the_lease_deadline(
    storage_server: SupabaseStorageServer, fault: str
) -> None:
    store = _patient_store(storage_server)
    lease = StoreLease.acquire(store, "run-a", ttl_s=TTL_S)  # no keeper: nothing renews it
    if fault == "status":
        storage_server.faults.fail_next(10_000, status=503, path_contains="progress.json")
    else:  # each attempt hangs until the client's read timeout
        storage_server.faults.stall_next(10_000, seconds=1.0, path_contains="progress.json")
    with pytest.raises(FenceExpired, match=r"progress\.json: not sent after \d+ attempt"):
        FencedStorage(store, lease).put("progress.json", b"{}")
    gave_up_at, deadline = time.monotonic(), lease.deadline()
    attempts = _progress_writes(storage_server)
    assert len(attempts) >= 2  # it did retry while that was safe
    assert max(attempts) + store.attempt_s <= deadline + 0.05  # no attempt could outlive it
    assert gave_up_at <= deadline + 0.05
    time.sleep(0.3)
    assert len(_progress_writes(storage_server)) == len(attempts)  # and nothing came later
    assert "faiss/faiss/progress.json" not in storage_server.objects


def test_renewals_keep_a_long_retried_write_going(storage_server: SupabaseStorageServer) -> None:
    store = _patient_store(storage_server)
    lease = StoreLease.acquire(store, "run-a", ttl_s=TTL_S)
    storage_server.faults.fail_next(40, status=503, path_contains="progress.json")
    started = time.monotonic()
    with LeaseKeeper(lease, interval_s=0.2) as keeper:
        FencedStorage(store, lease).put("progress.json", b"{}")
    assert time.monotonic() - started > TTL_S  # longer than one TTL, fenced all along
    assert keeper.error is None
    assert storage_server.objects["faiss/faiss/progress.json"].data == b"{}"


def test_the_lease_renewal_itself_is_fenced(storage_server: SupabaseStorageServer) -> None:
    store = _patient_store(storage_server)
    lease = StoreLease.acquire(store, "run-a", ttl_s=TTL_S)
    storage_server.faults.fail_next(10_000, status=503, method="POST", path_contains="lease.json")
    with pytest.raises(StorageUnavailable):
        lease.renew()
    assert max(r.at for r in storage_server.requests if r.method == "POST") <= lease.deadline()


class _Fence:
    def __init__(self, deadline: float) -> None:
        self.at = deadline

    def deadline(self) -> float:
        return self.at


def test_a_fenced_local_store_refuses_writes_after_the_deadline_and_still_reads(
    tmp_path: Path,
) -> None:
    now = [100.0]
    fence = _Fence(deadline=110.0)
    store = FencedStorage(LocalStore(tmp_path), fence, monotonic=lambda: now[0])
    store.put("a.json", b"1")
    now[0] = 110.0
    with pytest.raises(FenceExpired, match=r"put b\.json not started"):
        store.put("b.json", b"2")
    with pytest.raises(FenceExpired):
        store.delete(["a.json"])
    assert store.get("a.json") == b"1" and store.list() == ["a.json"]
    assert store.read_exact_into("a.json", [memoryview(bytearray(1))])  # what LocalStore offers
    fence.at = 200.0  # renewed
    store.put("b.json", b"2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_a_whole_build_through_the_fence_under_random_faults_is_exactly_once(
    storage_server: SupabaseStorageServer,
) -> None:
    """What the application runs: the writer on FencedStorage, the keeper renewing."""
    from sharding.checks import check_store
    from sharding.loader import load_index
    from tests.sharding.builds import Catalog, run_build

    store = _patient_store(storage_server)
    lease = StoreLease.acquire(store, "run-a", ttl_s=TTL_S)
    storage_server.faults.set_rate(0.15, seed=3, actions=("status", "reset", "lose_response"))
    with LeaseKeeper(lease, interval_s=0.2) as keeper:
        run_build(FencedStorage(store, lease), catalog=Catalog(n=40), before_commit=lease.verify)
    storage_server.faults.clear()
    assert keeper.error is None or isinstance(keeper.error, StorageUnavailable)
    assert load_index(store, "color").ids == Catalog(n=40).indexed()
    assert check_store(store).ok
