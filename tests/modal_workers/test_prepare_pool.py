"""PreparePool: the same output as in-process preparation, in order; a killed process is reported."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from modal_workers.embedders import ImageEmbedder
from modal_workers.pipeline import embed_refs
from modal_workers.prepare_pool import (
    PreparePool,
    cgroup_cpu_quota,
    preparation_processes,
    preparer_of,
)
from modal_workers.types import KINDS, EmbedOutput, FetchLimits, ImageRef
from tests.support.image_server import ImageServer
from tests.support.photos import PHOTO_NAMES


@pytest.fixture(scope="module")
def pool(histogram_embedder: ImageEmbedder) -> Iterator[PreparePool]:
    """Two processes, chunks of 3 refs: a small batch crosses chunk and process boundaries."""
    made = PreparePool.for_embedder(
        histogram_embedder, 2, threads_per_process=3, callers=2, chunk=3
    )
    assert made is not None
    yield made
    made.close()


def mixed_refs(server: ImageServer, count: int = 15) -> list[ImageRef]:
    refs = []
    for i in range(count):
        if i % 5 == 2:
            url = server.zoo_url("truncated_jpeg")
        elif i % 5 == 4:
            url = "ftp://example.com/refused.jpg"  # refused before any fetch
        else:
            url = server.url(f"/photos/{PHOTO_NAMES[i % len(PHOTO_NAMES)]}.jpg")
        refs.append(ImageRef(f"p{i}", url))
    return refs


def assert_same(pooled: EmbedOutput, alone: EmbedOutput) -> None:
    assert pooled.ids == alone.ids
    assert pooled.failures == alone.failures
    for kind in alone.vectors:
        np.testing.assert_array_equal(pooled.vectors[kind], alone.vectors[kind])


def test_the_pool_gives_what_in_process_preparation_gives(
    pool: PreparePool,
    image_server: ImageServer,
    histogram_embedder: ImageEmbedder,
    local_limits: FetchLimits,
) -> None:
    refs = mixed_refs(image_server)
    alone = embed_refs(refs, KINDS, histogram_embedder, local_limits, forward_batch=4)
    pooled = embed_refs(refs, KINDS, histogram_embedder, local_limits, forward_batch=4, pool=pool)
    assert_same(pooled, alone)
    assert pooled.ids == [ref.id for i, ref in enumerate(refs) if i % 5 not in (2, 4)]
    assert [f.reason for f in pooled.failures] == ["decode_error", "bad_scheme"] * 3
    # Two calls at once share the pool (a container's INPUTS_PER_CONTAINER) and keep their order.
    results: dict[str, EmbedOutput] = {}

    def call(name: str, part: list[ImageRef]) -> None:
        results[name] = embed_refs(part, ["color"], histogram_embedder, local_limits, pool=pool)

    halves = {"a": refs[:9], "b": refs[4:]}
    threads = [threading.Thread(target=call, args=item) for item in halves.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for name, part in halves.items():
        assert_same(results[name], embed_refs(part, ["color"], histogram_embedder, local_limits))


def test_the_clip_crop_prepares_in_the_pool_too(
    image_server: ImageServer, clip_embedder: ImageEmbedder, local_limits: FetchLimits
) -> None:
    refs = mixed_refs(image_server, 6)
    with PreparePool.for_embedder(clip_embedder, 2, threads_per_process=2) as clip_pool:
        assert clip_pool.serves(clip_embedder)
        pooled = embed_refs(refs, ["combined"], clip_embedder, local_limits, pool=clip_pool)
        pids, ring = clip_pool.pids(), Path("/dev/shm") / clip_pool.shm.name.lstrip("/")
        assert ring.exists() and all(pid and Path(f"/proc/{pid}").exists() for pid in pids)
    assert_same(pooled, embed_refs(refs, ["combined"], clip_embedder, local_limits))
    # Closed: the processes are gone (reaped) and the shared memory is unlinked.
    assert not ring.exists() and not any(Path(f"/proc/{pid}").exists() for pid in pids)
    assert not clip_pool.serves(clip_embedder)  # a closed pool is never used again


def test_a_pool_made_for_another_crop_is_not_used(
    pool: PreparePool, clip_embedder: ImageEmbedder, histogram_embedder: ImageEmbedder
) -> None:
    assert pool.serves(histogram_embedder) and not pool.serves(clip_embedder)
    assert preparer_of(clip_embedder) != preparer_of(histogram_embedder)


def test_a_killed_process_is_reported_for_its_products_and_replaced(
    image_server: ImageServer, histogram_embedder: ImageEmbedder
) -> None:
    """SIGKILL while a chunk waits on a dripping server: its products come back worker_lost."""
    limits = FetchLimits(allow_private_urls=True, timeout_s=30, retries=0)
    photo = image_server.url("/photos/coffee.jpg")
    refs = [ImageRef(0, photo), ImageRef(1, photo), ImageRef(2, image_server.url("/drip"))]
    refs.append(ImageRef(3, photo))
    with PreparePool.for_embedder(histogram_embedder, 1, threads_per_process=2, chunk=2) as one:
        (pid,) = one.pids()
        image_server.hits.clear()

        def kill_once_dripping() -> None:
            end = time.monotonic() + 20
            while image_server.hits["/drip"] == 0 and time.monotonic() < end:
                time.sleep(0.01)
            time.sleep(0.2)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_once_dripping)
        killer.start()
        started = time.monotonic()
        output = embed_refs(refs, ["color"], histogram_embedder, limits, pool=one)
        elapsed = time.monotonic() - started
        killer.join()
        assert elapsed < 15  # answered when the process died, not after the 30 s deadline
        assert output.ids == [0, 1]
        assert [(f.id, f.reason) for f in output.failures] == [
            (2, "worker_lost"),
            (3, "worker_lost"),
        ]
        assert "SIGKILL" in output.failures[0].message and str(pid) in output.failures[0].message
        # The pool goes on with a new process.
        again = embed_refs(refs[:2], ["color"], histogram_embedder, limits, pool=one)
        assert again.ids == [0, 1] and one.restarts == 1 and one.pids() != [pid]


def test_processes_follow_the_usable_cores(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1) == 3.0
    assert preparation_processes(reserved=1.0) == 0  # one core: prepare in-process
    assert preparation_processes(reserved=1.9) == 0
    assert preparation_processes(reserved=2.0) in (0, 2)  # 0 where fewer cores are usable
    assert preparation_processes(reserved=1.0, asked=3) == 3


def test_siglip_resizing_prepares_in_the_pool_and_a_changed_prepare_stays_in_process(
    tmp_path: Path, image_server: ImageServer, local_limits: FetchLimits
) -> None:
    from modal_workers.embedders import load_embedder
    from modal_workers.histogram import HistogramEmbedder
    from tests.modal_workers.test_siglip import EDGE, build_tiny_siglip

    siglip = load_embedder("clip", str(build_tiny_siglip(tmp_path / "siglip")), device="cpu")
    preparer = preparer_of(siglip)
    assert preparer is not None and preparer.resize_to == (EDGE, EDGE)
    refs = mixed_refs(image_server, 5)
    with PreparePool.for_embedder(siglip, 2, threads_per_process=2) as siglip_pool:
        pooled = embed_refs(refs, ["color"], siglip, local_limits, pool=siglip_pool)
    assert_same(pooled, embed_refs(refs, ["color"], siglip, local_limits))

    class Mirrored(HistogramEmbedder):  # a prepare the pool does not know
        def prepare(self, image, views):  # type: ignore[no-untyped-def]
            return super().prepare(image.transpose(0), views)

    mirrored = Mirrored()
    assert preparer_of(mirrored) is None
    assert PreparePool.for_embedder(mirrored, 2) is None
