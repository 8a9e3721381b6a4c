"""The Modal class run in-process with .local(): enter hook, picklable answers, no torch import."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modal_workers.app import APP_NAME, Embedder, app
from modal_workers.types import EmbedOutput, FetchLimits
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
