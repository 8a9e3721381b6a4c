"""The Modal class run in-process with .local(): enter hook, picklable answers, no torch import."""

from __future__ import annotations

import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from modal_workers.app import APP_NAME, Embedder, app
from modal_workers.embedders import load_embedder
from modal_workers.pipeline import embed_refs
from modal_workers.prepare_pool import preparation_processes
from modal_workers.types import EmbedOutput, FetchLimits, ImageRef
from tests.support.image_server import ImageServer

pytestmark = pytest.mark.filterwarnings("ignore:The Embedder:UserWarning")


def test_app_name() -> None:
    assert app.name == APP_NAME == "modal-faiss-builder"


def test_embed_local_runs_enter_and_the_pipeline(
    tiny_clip_dir: Path, image_server: ImageServer
) -> None:
    embedder = Embedder(embedder="clip", model=str(tiny_clip_dir))
    refs = [(1, image_server.url("/photos/coffee.jpg")), ("b", image_server.url("/status/404"))]
    limits = FetchLimits(allow_private_urls=True, timeout_s=2).to_dict()
    answer = embedder.embed.local(refs, ["color", "combined"], limits)
    answer = pickle.loads(pickle.dumps(answer))  # what crosses the Modal boundary
    output = EmbedOutput.from_wire(answer)
    assert output.ids == [1]
    assert (
        output.vectors["combined"].shape == (1, 32) and output.vectors["color"].dtype == np.float32
    )
    assert answer["failures"] == [{"id": "b", "reason": "fetch_http_404", "message": "HTTP 404"}]


def test_describe_local(tiny_clip_dir: Path) -> None:
    described = Embedder(embedder="histogram").describe.local()
    described.pop("deployment")
    assert described == {
        "embedder": "histogram",
        "model": "histogram-v1",
        "dims": {"color": 500, "structure": 144, "combined": 644},
        "model_digest": "histogram-v1",
    }


def test_orchestrator_imports_do_not_pull_in_torch() -> None:
    code = (
        "import sys, modal_workers.app, modal_workers.remote, modal_workers.pipeline, "
        "modal_workers.embedders; print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False False"


# What `modal deploy` would ask Modal for, read from the Modal class object the app defines (its
# service function's FunctionInfo and the autoscaler settings its loader sends), not from text.
RESOURCES = (
    "from modal._utils.async_utils import synchronizer\n"
    "import json, modal_workers.app as deployed\n"
    "function = deployed.Embedder._get_class_service_function()\n"
    "info = function.info()\n"
    "load = synchronizer._translate_in(function)._load\n"
    "cells = dict(zip(load.__code__.co_freevars, (c.cell_contents for c in load.__closure__)))\n"
    "scaling = cells['autoscaler_settings']\n"
    "print(json.dumps({'gpu': info.gpus, 'cpu': info.cpu, 'memory_mb': info.memory_mib,\n"
    "    'timeout_s': info.timeout, 'retries': info.max_retries,\n"
    "    'inputs': info.concurrency_info.max_inputs, 'max_containers': scaling.max_containers,\n"
    "    'scaledown_s': scaling.scaledown_window, 'described': deployed.deployment()}))\n"
)


def deployed_resources(env: dict[str, str]) -> dict:
    """The app file imported as `modal deploy` would, with these deploy-time variables."""
    import json
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("FAISS_BUILDER_MODAL_")}
    result = subprocess.run(
        [sys.executable, "-c", RESOURCES],
        capture_output=True,
        text=True,
        env=clean | env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(result.stdout))


def test_the_deployed_class_reserves_what_the_defaults_say() -> None:
    resources = deployed_resources({})
    described = resources.pop("described")
    assert resources == {
        "gpu": [["A10G", 1]],
        "cpu": 8.0,
        "memory_mb": 16384,
        "timeout_s": 600,
        "retries": 2,
        "inputs": 2,
        "max_containers": 10,
        "scaledown_s": 120,
    }
    # What describe() tells the orchestrator is what was deployed: it fills 10 x 2 calls.
    assert described["max_containers"] == 10 and described["inputs_per_container"] == 2
    assert described["threads_per_call"] == 32  # 4 per reserved core
    # One preparation process per usable core (8 reserved, fewer where fewer are usable here).
    assert described["prepare_processes"] == preparation_processes(8.0)


def test_deploy_time_variables_set_the_deployed_resources() -> None:
    env = {
        "FAISS_BUILDER_MODAL_GPU": "L4",
        "FAISS_BUILDER_MODAL_CPU": "3.5",
        "FAISS_BUILDER_MODAL_MEMORY_MB": "6144",
        "FAISS_BUILDER_MODAL_TIMEOUT_S": "900",
        "FAISS_BUILDER_MODAL_RETRIES": "4",
        "FAISS_BUILDER_MODAL_MAX_CONTAINERS": "25",
        "FAISS_BUILDER_MODAL_INPUTS_PER_CONTAINER": "3",
        "FAISS_BUILDER_MODAL_SCALEDOWN_S": "60",
        "FAISS_BUILDER_MODAL_PREPARE_PROCESSES": "3",
    }
    resources = deployed_resources(env)
    described = resources.pop("described")
    assert resources == {
        "gpu": [["L4", 1]],
        "cpu": 3.5,
        "memory_mb": 6144,
        "timeout_s": 900,
        "retries": 4,
        "inputs": 3,
        "max_containers": 25,
        "scaledown_s": 60,
    }
    assert described["threads_per_call"] == 14 and described["inputs_per_container"] == 3
    assert described["prepare_processes"] == 3


def test_describe_tells_the_orchestrator_the_deployment(tiny_clip_dir: Path) -> None:
    described = Embedder(embedder="histogram").describe.local()
    assert described["deployment"]["max_containers"] == 10
    assert described["deployment"]["cpu"] == 8.0


def test_one_fetch_client_serves_every_call_of_a_container(
    tiny_clip_dir: Path, image_server: ImageServer
) -> None:
    """The container's SharedClients: built once, shared by threads, left open between calls."""
    from modal_workers.fetch import SharedClients

    clients = SharedClients(callers=2)
    limits = FetchLimits(allow_private_urls=True, timeout_s=2, threads=4)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: clients.get(limits), range(16)))
    assert len({id(client) for client in got}) == 1
    engine = load_embedder("histogram", None)
    refs = [ImageRef(1, image_server.url("/photos/coffee.jpg"))]
    for _ in range(2):  # the second call fetches through the client the first one used
        output = embed_refs(refs, ["color"], engine, limits, client=got[0])
        assert output.ids == [1] and output.failures == []
    assert not got[0].is_closed
    clients.close()
    assert got[0].is_closed


def test_the_container_starts_its_preparation_processes_once(
    tiny_clip_dir: Path, image_server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two calls, one pool started by the enter hook: the same processes serve both calls, and
    the answers are those of in-process preparation (successes in order, each failure's reason)."""
    import modal_workers.app as deployed

    monkeypatch.setattr(deployed, "PREPARE_PROCESSES", "2")  # whatever this machine's cores
    embedder = Embedder(embedder="clip", model=str(tiny_clip_dir))
    refs = [
        (1, image_server.url("/photos/coffee.jpg")),
        ("b", image_server.url("/status/404")),
        (3, image_server.zoo_url("truncated_jpeg")),
        (4, image_server.url("/photos/rocket.jpg")),
    ]
    limits = FetchLimits(allow_private_urls=True, timeout_s=2)
    first = EmbedOutput.from_wire(embedder.embed.local(refs, ["combined"], limits.to_dict()))
    pool = embedder.pool
    assert pool is not None and len(pool.pids()) == 2
    pids = pool.pids()
    try:
        second = EmbedOutput.from_wire(embedder.embed.local(refs, ["combined"], limits.to_dict()))
        assert embedder.pool is pool and pool.pids() == pids and pool.restarts == 0
    finally:
        pool.close()
    engine = load_embedder("clip", str(tiny_clip_dir), device="cpu")
    alone = embed_refs([ImageRef(i, u) for i, u in refs], ["combined"], engine, limits)
    for output in (first, second):
        assert output.ids == alone.ids == [1, 4] and output.failures == alone.failures
        np.testing.assert_allclose(output.vectors["combined"], alone.vectors["combined"], atol=1e-6)
    assert [f.reason for f in first.failures] == ["fetch_http_404", "decode_error"]
