"""Model identity by weights, not by the path string that named them.

A local checkpoint folder is identified by an XXH3-128 digest over its weight and config files
(relative names, sizes and bytes, in sorted order), so the same weights spelled `./m`, `m` or
`/abs/m` give the same digest, and new weights copied into the same folder give a new one.
A hub id is identified by the commit of the cached snapshot it was loaded from.
"""

from __future__ import annotations

from pathlib import Path

import xxhash

# Files that decide the vectors: weights (any common format), the model config, the preprocessing.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf")
CONFIG_NAMES = ("config.json", "preprocessor_config.json")
CHUNK = 8 << 20


def identity_files(folder: Path) -> list[Path]:
    """The files of a checkpoint folder that decide its vectors, sorted by name."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and (
            path.name in CONFIG_NAMES
            or path.name.endswith(WEIGHT_SUFFIXES)
            or path.name.endswith(".index.json")  # sharded checkpoints: which shard holds what
        )
    )


def folder_digest(folder: str | Path) -> str:
    """ "xxh3-128:<hex>" over (relative name, size, bytes) of each identity file."""
    root = Path(folder).resolve()
    digest = xxhash.xxh3_128()
    for path in identity_files(root):
        name = path.name.encode("utf-8")
        size = path.stat().st_size
        digest.update(len(name).to_bytes(4, "big") + name + size.to_bytes(8, "big"))
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
    return f"xxh3-128:{digest.hexdigest()}"


def hub_revision(model_id: str, cache_dir: str | Path | None = None) -> str | None:
    """The commit hash of the cached snapshot of a hub model, or None when none is cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model_id, "config.json", cache_dir=cache_dir)
    except Exception:  # not a valid repo id: no cached snapshot
        return None
    if not isinstance(cached, str):
        return None
    snapshot = Path(cached).parent
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def model_digest(model_id: str, cache_dir: str | Path | None = None) -> str:
    """A stable identity of the checkpoint `model_id` names (a local folder or a hub id)."""
    if Path(model_id).expanduser().is_dir():
        return folder_digest(Path(model_id).expanduser())
    revision = hub_revision(model_id, cache_dir)
    if revision is not None:
        return f"hf:{model_id}@{revision}"
    return f"unverified:{model_id}"  # neither a folder nor a cached snapshot: the name is all
