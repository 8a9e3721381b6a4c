"""CLIP embedder: loads a saved tiny CLIP, matches CLIPImageProcessor, clear offline error."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessorPil

from modal_workers.clip import ClipEmbedder
from modal_workers.decode import decode_image
from modal_workers.embedders import EmbedderLoadError, ImageEmbedder, load_embedder
from modal_workers.types import KINDS
from tests.support.image_server import encode
from tests.support.photos import PHOTO_NAMES, load_photo

# Documented tolerances (normalised pixel units, i.e. after (x/255 - mean) / std):
SAME_DECODE_MAX_ABS = 1e-5  # same PIL image in: our path == CLIPImageProcessor up to float rounding
DRAFT_DECODE_MEAN_ABS = 0.05  # draft (reduced) JPEG decode vs full decode + processor
DRAFT_DECODE_MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def processor(tiny_clip_dir: Path) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil.from_pretrained(str(tiny_clip_dir))


def our_pixels(embedder: ClipEmbedder, image: Image.Image) -> torch.Tensor:
    return embedder.normalise(embedder.prepare(image, ["color"])["color"][None])


def test_loads_from_a_local_folder(clip_embedder: ImageEmbedder, tiny_clip_dir: Path) -> None:
    assert clip_embedder.name == "clip"
    assert clip_embedder.model_id == str(tiny_clip_dir)
    assert clip_embedder.dims == {"color": 16, "structure": 16, "combined": 32}
    assert (clip_embedder.decode_edge, clip_embedder.crop) == (224, (224, 224))


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_preprocessing_matches_the_processor(
    name: str, clip_embedder: ClipEmbedder, processor: CLIPImageProcessorPil
) -> None:
    photo = load_photo(name)
    reference = processor(images=photo, return_tensors="pt")["pixel_values"]
    assert (our_pixels(clip_embedder, photo) - reference).abs().max() < SAME_DECODE_MAX_ABS


@pytest.mark.parametrize("name", ["coffee", "rocket", "hubble_deep_field"])
def test_draft_decode_stays_within_tolerance(
    name: str, clip_embedder: ClipEmbedder, processor: CLIPImageProcessorPil
) -> None:
    photo = load_photo(name)
    data = encode(photo.resize((photo.width * 3, photo.height * 3)), "JPEG", quality=90)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    reference = processor(images=full, return_tensors="pt")["pixel_values"]
    drafted = decode_image(data, 10**9, 224)
    assert drafted.width < full.width  # draft mode really reduced the decode
    ours = our_pixels(clip_embedder, drafted)
    assert (ours - reference).abs().mean() < DRAFT_DECODE_MEAN_ABS
    cosine = (
        clip_embedder.forward_pixel_values(ours) @ clip_embedder.forward_pixel_values(reference).T
    )
    assert float(cosine[0, 0]) > DRAFT_DECODE_MIN_COSINE


def test_vectors_equal_a_forward_on_processor_pixels(
    clip_embedder: ClipEmbedder, processor: CLIPImageProcessorPil
) -> None:
    photos = [load_photo("astronaut"), load_photo("chelsea")]
    ours = clip_embedder.embed(photos, ["color"])["color"]
    reference = processor(images=photos, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        features = clip_embedder.model.get_image_features(pixel_values=reference).pooler_output
    expected = torch.nn.functional.normalize(features, dim=-1).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_all_kinds_are_unit_float32(clip_embedder: ImageEmbedder) -> None:
    vectors = clip_embedder.embed([load_photo("rocket")], KINDS)
    for kind in KINDS:
        assert vectors[kind].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors[kind], axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors["color"], vectors["structure"])


def test_missing_weights_offline_give_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(EmbedderLoadError) as info:
        load_embedder("clip", "no-such-org/no-such-clip-model")
    message = str(info.value)
    assert "no-such-org/no-such-clip-model" in message
    assert "--embedder histogram" in message and "HF_HOME" in message
    assert time.monotonic() - started < 20


def test_unknown_embedder_name() -> None:
    with pytest.raises(EmbedderLoadError, match="histogram"):
        load_embedder("resnet")
