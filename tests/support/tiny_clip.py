"""A tiny, randomly initialised CLIP saved like a hub checkpoint, so the real loading code runs offline."""

from __future__ import annotations

from pathlib import Path


def build_tiny_clip(directory: Path, *, projection_dim: int = 16, seed: int = 0) -> Path:
    """Save a 2-layer CLIP (224px input, 32px patches) and its image processor config to `directory`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "vocab_size": 99,
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=projection_dim,
    )
    CLIPModel(config).eval().save_pretrained(directory)
    CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(directory)
    return directory


def save_tiny_tokenizer(directory: Path) -> Path:
    """Save a CLIPTokenizer (byte-level BPE over lower-case letters and digits, a few merges)
    next to a tiny CLIP, so its text tower can be used offline; ids stay below its vocab_size."""
    import json
    import string

    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges = [("r", "e"), ("re", "d</w>"), ("b", "a"), ("ba", "g</w>")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{left} {right}" for left, right in merges)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt")).save_pretrained(
        directory
    )
    return directory
