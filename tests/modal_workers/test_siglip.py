"""SigLIP checkpoints through the clip embedder: image vectors as SiglipImageProcessor + SiglipModel
make them, text through its text tower (padded to 64, no attention mask), a build and a text
search over the store it made. A tiny random SigLIP saved with a tokenizer, no network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modal_workers.embedder import embed_text
from modal_workers.embedders import load_embedder
from tests.support.tiny_clip import save_tiny_tokenizer

EDGE = 64  # the tiny SigLIP's input: 64 x 64, 16 px patches


def build_tiny_siglip(directory: Path) -> Path:
    """A 2-layer SigLIP (32 wide, text of 64 positions) + its image processor + a tokenizer."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    torch.manual_seed(0)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
             "num_attention_heads": 4}  # fmt: skip
    config = SiglipConfig(
        text_config={
            **tower,
            "vocab_size": 99,
            "max_position_embeddings": 64,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 1,
        },
        vision_config={**tower, "image_size": EDGE, "patch_size": 16},
    )
    SiglipModel(config).eval().save_pretrained(directory)
    SiglipImageProcessorPil(size={"height": EDGE, "width": EDGE}).save_pretrained(directory)
    return save_tiny_tokenizer(directory)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"))


def _reference_model(folder: Path) -> object:
    from transformers import SiglipModel

    return SiglipModel.from_pretrained(folder).eval()


def test_image_vectors_are_siglips_own(siglip_dir: Path, photos_dir: Path) -> None:
    """The embedder's colour vector = SiglipImageProcessor (resize to 64 x 64, no crop, mean and
    std 0.5) + SiglipModel.get_image_features, normalised; dims are the vision hidden size."""
    import torch
    from transformers import SiglipImageProcessorPil

    embedder = load_embedder("clip", str(siglip_dir), device="cpu")
    assert embedder.dims == {"color": 32, "structure": 32, "combined": 64}
    assert embedder.decode_edge == EDGE
    photo = Image.open(next(iter(sorted(photos_dir.glob("*.jpg"))))).convert("RGB")
    image = photo.crop((0, 0, photo.width, photo.height * 3 // 5))  # wide: a crop would differ
    ours = embedder.embed([image], ["color"])["color"][0]
    processor = SiglipImageProcessorPil.from_pretrained(siglip_dir)
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        output = _reference_model(siglip_dir).get_image_features(pixel_values=pixels)  # type: ignore[attr-defined]
    reference = torch.nn.functional.normalize(output.pooler_output, dim=-1)[0].numpy()
    assert np.linalg.norm(ours) == pytest.approx(1.0, abs=1e-5)
    assert float(np.dot(ours, reference)) == pytest.approx(1.0, abs=1e-4)


def test_text_goes_through_the_siglip_text_tower_padded_to_64(siglip_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    embedder = load_embedder("clip", str(siglip_dir), device="cpu")
    alone = embed_text(embedder, ["red bag"])[0]
    batch = embed_text(embedder, ["red bag", "a much longer description of a blue shoe"])
    assert batch.shape == (2, 32) and np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert np.allclose(alone, batch[0], atol=1e-5)
    assert not np.allclose(batch[0], batch[1], atol=1e-3)
    tokenizer = AutoTokenizer.from_pretrained(siglip_dir)
    ids = tokenizer(["red bag"], padding="max_length", max_length=64, return_tensors="pt")
    assert ids["input_ids"].shape == (1, 64)
    with torch.inference_mode():  # SigLIP was trained without an attention mask
        output = _reference_model(siglip_dir).get_text_features(input_ids=ids["input_ids"])  # type: ignore[attr-defined]
    reference = torch.nn.functional.normalize(output.pooler_output, dim=-1)[0].numpy()
    assert np.allclose(alone, reference, atol=1e-5)


def test_the_model_digest_names_the_siglip_weights(siglip_dir: Path, tmp_path: Path) -> None:
    """identity.model_digest covers SigLIP's files (config, weights, preprocessor) as CLIP's."""
    import shutil

    from modal_workers.identity import identity_files, model_digest

    names = {path.name for path in identity_files(siglip_dir)}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= names
    copy = tmp_path / "copy"
    shutil.copytree(siglip_dir, copy)
    assert model_digest(str(copy)) == model_digest(str(siglip_dir))
    config = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**config, "resample": 3}))
    assert model_digest(str(copy)) != model_digest(str(siglip_dir))


def test_other_model_families_are_refused_in_one_line(tmp_path: Path) -> None:
    from transformers import BertConfig

    from modal_workers.embedders import EmbedderLoadError

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=8).save_pretrained(tmp_path)  # fmt: skip
    with pytest.raises(EmbedderLoadError) as caught:
        load_embedder("clip", str(tmp_path), device="cpu")
    assert str(caught.value) == (
        f"model {str(tmp_path)!r} is a 'bert' checkpoint; the clip embedder loads clip and "
        "siglip checkpoints (transformers CLIPModel, SiglipModel)"
    )


def test_a_build_with_siglip_and_a_text_search_over_it(
    prefect_api: object, siglip_dir: Path, tmp_path: Path
) -> None:
    """`build --model <siglip>` embeds the images with SigLIP; `search --text` uses its text
    tower, and the scores are the text vector's dot products with the stored vectors."""
    from typer.testing import CliRunner

    from faiss_builder.cli import app
    from faiss_builder.demo import make_demo_catalog
    from sharding import LocalStore, load_index, read_progress

    catalog, _ = make_demo_catalog(tmp_path / "catalog", 8)
    store = tmp_path / "store"
    built = CliRunner().invoke(app, ["build", "--store", str(store), "--catalog", str(catalog),
                                     "--embedder", "clip", "--model", str(siglip_dir),
                                     "--kinds", "color", "--json"])  # fmt: skip
    assert built.exit_code == 0, built.stderr
    progress = read_progress(LocalStore(store))
    assert progress is not None and progress.embedder == "clip"
    index = load_index(LocalStore(store), "color")
    assert index.ntotal == 8 and index.dim == 32
    embedder = load_embedder("clip", str(siglip_dir), device="cpu")
    from modal_workers.decode import decode_image

    data = (catalog.parent / "images" / "00001.jpg").read_bytes()
    first = decode_image(data, 40_000_000, embedder.decode_edge)  # as the build decodes it
    assert np.allclose(index.vector(1), embedder.embed([first], ["color"])["color"][0], atol=1e-4)
    found = CliRunner().invoke(app, ["search", "--store", str(store), "--text", "red bag",
                                     "-k", "3", "--json"])  # fmt: skip
    assert found.exit_code == 0, found.stderr
    hits = json.loads(found.stdout)["hits"]
    text = embed_text(embedder, ["red bag"])[0]
    assert len(hits) == 3
    for hit in hits:
        assert hit["score"] == pytest.approx(float(np.dot(index.vector(hit["id"]), text)), abs=1e-4)


def test_siglips_own_sentencepiece_tokenizer_serves_text_queries(tmp_path: Path) -> None:
    """A SigLIP checkpoint saved with SiglipTokenizer (sentencepiece, as real checkpoints ship):
    text queries load it and embed as SiglipModel does with it."""
    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, SiglipTokenizer

    folder = build_tiny_siglip(tmp_path / "siglip")
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):  # fmt: skip
        (folder / name).unlink(missing_ok=True)  # drop the stand-in CLIP tokenizer
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["red leather handbag", "blue cotton shirt", "white shoe"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "spiece"),
                                   vocab_size=20, model_type="unigram", minloglevel=2)  # fmt: skip
    SiglipTokenizer(vocab_file=str(tmp_path / "spiece.model")).save_pretrained(folder)
    assert type(AutoTokenizer.from_pretrained(folder)).__name__ == "SiglipTokenizer"

    embedder = load_embedder("clip", str(folder), device="cpu")
    ours = embed_text(embedder, ["red handbag"])[0]
    ids = AutoTokenizer.from_pretrained(folder)(
        ["red handbag"], padding="max_length", max_length=64, truncation=True, return_tensors="pt"
    )["input_ids"]
    with torch.inference_mode():
        output = _reference_model(folder).get_text_features(input_ids=ids)  # type: ignore[attr-defined]
    reference = torch.nn.functional.normalize(output.pooler_output, dim=-1)[0].numpy()
    assert np.allclose(ours, reference, atol=1e-5)
