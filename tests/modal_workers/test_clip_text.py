"""The CLIP text tower: text vectors in the image space, and a clear refusal without one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from modal_workers.embedder import NoTextTower, embed_text
from modal_workers.embedders import load_embedder
from tests.support.tiny_clip import save_tiny_tokenizer


@pytest.fixture(scope="module")
def clip_with_tokenizer(tiny_clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-clip-text")
    shutil.copytree(tiny_clip_dir, folder, dirs_exist_ok=True)
    return save_tiny_tokenizer(folder)


def test_text_vectors_are_unit_norm_in_the_colour_space(clip_with_tokenizer: Path) -> None:
    embedder = load_embedder("clip", str(clip_with_tokenizer), device="cpu")
    vectors = embed_text(embedder, ["red bag", "blue shoe", "red bag"])
    assert vectors.shape == (3, embedder.dims["color"]) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)


def test_the_same_text_gives_the_same_vector_alone_or_padded(clip_with_tokenizer: Path) -> None:
    embedder = load_embedder("clip", str(clip_with_tokenizer), device="cpu")
    alone = embed_text(embedder, ["bag"])[0]
    padded = embed_text(embedder, ["bag", "a much longer description of a red bag"])[0]
    assert np.allclose(alone, padded, atol=1e-5)


def test_histogram_has_no_text_tower() -> None:
    with pytest.raises(NoTextTower, match="histogram embedder has no text tower"):
        embed_text(load_embedder("histogram"), ["red bag"])


def test_a_model_saved_without_tokenizer_is_refused_in_one_line(tiny_clip_dir: Path) -> None:
    embedder = load_embedder("clip", str(tiny_clip_dir), device="cpu")
    with pytest.raises(NoTextTower, match="has no tokenizer saved with it") as caught:
        embed_text(embedder, ["red bag"])
    assert "\n" not in str(caught.value)
