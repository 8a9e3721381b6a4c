"""CLIP and SigLIP image embedder (transformers): vectorised preprocessing, inference mode, fp16
on GPU.

One class serves both families, told apart by the checkpoint's `model_type`:
- CLIP (CLIPModel): resize the shortest edge, centre-crop, OpenAI mean/std; text tokens padded
  to the longest text of the batch, with an attention mask.
- SigLIP (SiglipModel): resize to the processor's height x width (no crop, as
  SiglipImageProcessor does), mean/std 0.5; text tokens padded to max_length (64), with no
  attention mask, because that is how SigLIP was trained and its text tower pools the last
  position. Its image vector is the vision head's output (the vision hidden size).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedModel

from modal_workers.embedder import EmbedderLoadError, NoTextTower, SquareCropEmbedder
from modal_workers.identity import model_digest
from modal_workers.views import make_views

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# CPU: 32 per forward, measured side by side (bench.embed_throughput): 64 (two views of 32)
# ran 0.76 of the raw forward per forward, 32 ran 0.90 (a GPU batches both views in one forward).
MAX_FORWARD_BATCH = {"cpu": 32, "cuda": 256}
# Images per embed_views call (the pipeline's batch): each image gives up to two views, so on a
# GPU 128 images fill one 256-image forward; on CPU 32 keeps the measured best forward size.
PIPELINE_BATCH = {"cpu": 32, "cuda": 128}
#: Checkpoint families this embedder loads (config.json's model_type).
FAMILIES = ("clip", "siglip")


def device_kind(device: str) -> str:
    return "cuda" if device.startswith("cuda") else "cpu"


class ClipEmbedder(SquareCropEmbedder):
    """CLIP or SigLIP image tower; resize/crop per image (PIL, in threads), normalise per batch."""

    name = "clip"

    def __init__(
        self, model_id: str, device: str | None = None, precision: str | None = None
    ) -> None:
        self.model_id = model_id
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # fp32 on CPU keeps vectors exact; fp16 on GPU (A10G tensor cores). bf16 on CPU is opt-in.
        self.dtype = PRECISIONS[precision or ("fp16" if self.device.startswith("cuda") else "fp32")]
        self.model: Any = load_clip_model(model_id, self.device, self.dtype)
        self.family = str(self.model.config.model_type)
        self.model_digest = model_digest(model_id)
        self.forward_batch = PIPELINE_BATCH[device_kind(self.device)]
        self.configure_preprocessing(read_preprocessor_config(model_id, self.family))
        dim = image_dim(self.model)
        self.dims = {"color": dim, "structure": dim, "combined": 2 * dim}

    def configure_preprocessing(self, config: dict[str, Any]) -> None:
        size = config.get("size") or {}
        crop = config.get("crop_size") or {}
        #: SigLIP: (height, width) every image is resized to, aspect ratio not kept (no crop).
        self.resize_to: tuple[int, int] | None = None
        if "shortest_edge" not in size and "height" in size and "width" in size:
            self.resize_to = (int(size["height"]), int(size["width"]))
            self.decode_edge = max(self.resize_to)  # the decoder keeps at least this edge
            self.crop = self.resize_to
        else:
            self.decode_edge = int(size.get("shortest_edge", 224))
            self.crop = (
                int(crop.get("height", self.decode_edge)),
                int(crop.get("width", self.decode_edge)),
            )
        self.resample = int(config.get("resample", 3))  # 3 = bicubic
        self.rescale = float(config.get("rescale_factor", 1 / 255))
        mean = config.get("image_mean") or OPENAI_CLIP_MEAN
        std = config.get("image_std") or OPENAI_CLIP_STD
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def prepare(self, image: Image.Image, views: Any) -> dict[str, np.ndarray]:
        if self.resize_to is None:
            return super().prepare(image, views)
        height, width = self.resize_to  # SigLIP: the whole image, squashed to the model's size
        rgb = np.asarray(image.convert("RGB").resize((width, height), resample=self.resample))
        return make_views(np.ascontiguousarray(rgb), views)

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Projected text features (get_text_features), L2-normalised like the image vectors:
        the same space as the colour view, so a text vector searches the `color` index."""
        if not texts:
            return np.zeros((0, self.dims["color"]), np.float32)
        if self.family == "siglip":  # as SigLIP was trained: 64 tokens, no attention mask
            length = int(self.model.config.text_config.max_position_embeddings)
            with self._tokenizer_lock:
                tokens = self.tokenizer(
                    texts, padding="max_length", max_length=length, truncation=True,
                    return_tensors="pt",
                )  # fmt: skip
            output = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device))
        else:
            with self._tokenizer_lock:  # a fast tokenizer's padding state is not thread-safe
                tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
            output = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
        features = output.pooler_output if hasattr(output, "pooler_output") else output
        features = torch.nn.functional.normalize(features.float(), dim=-1, eps=1e-12)
        return features.cpu().numpy().astype(np.float32)

    @functools.cached_property
    def _tokenizer_lock(self) -> threading.Lock:
        return threading.Lock()

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The tokenizer saved with the model, loaded on the first text query."""
        from transformers import AutoTokenizer

        files = "spiece.model" if self.family == "siglip" else "vocab.json, merges.txt"
        refusal = (
            f"model {self.model_id!r} has no tokenizer saved with it, so its text tower cannot "
            f"be used; save the tokenizer ({files}) next to the weights"
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_id)
        except ImportError as exc:  # SiglipTokenizer needs the sentencepiece package
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise NoTextTower(
                f"model {self.model_id!r}: its tokenizer cannot be loaded here ({first}); "
                "install sentencepiece for SigLIP's tokenizer"
            ) from None
        except Exception:  # no tokenizer files next to the weights, or none in the cache
            raise NoTextTower(refusal) from None
        # Without vocab files transformers builds an empty tokenizer (special tokens only).
        if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
            raise NoTextTower(refusal)
        vocab_size = int(getattr(self.model.config.text_config, "vocab_size", 0) or 0)
        if vocab_size and len(tokenizer) > vocab_size:
            raise NoTextTower(
                f"model {self.model_id!r}: its tokenizer has {len(tokenizer)} tokens, its text "
                f"tower {vocab_size}: not the same model"
            )
        return tokenizer

    def embed_views(self, batches: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All views go through one forward (better GPU batches), then are split back per view."""
        views = list(batches)
        stacked = np.concatenate([batches[v] for v in views])
        vectors = self.forward_uint8(stacked)
        bounds = np.cumsum([0] + [len(batches[v]) for v in views])
        return {v: vectors[bounds[i] : bounds[i + 1]] for i, v in enumerate(views)}

    def forward_uint8(self, pixels: np.ndarray) -> np.ndarray:
        step = MAX_FORWARD_BATCH[device_kind(self.device)]
        parts = [self.forward_chunk(pixels[i : i + step]) for i in range(0, len(pixels), step)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dims["color"]), np.float32)

    @torch.inference_mode()
    def forward_chunk(self, pixels: np.ndarray) -> np.ndarray:
        return self.forward_pixel_values(self.normalise(pixels))

    def normalise(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 NHWC -> normalised float32 NCHW, done on the device (4x less to transfer)."""
        x = torch.from_numpy(np.require(pixels, requirements=["C", "W"])).to(self.device)
        x = x.permute(0, 3, 1, 2).to(torch.float32) * self.rescale
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def forward_pixel_values(self, pixel_values: torch.Tensor) -> np.ndarray:
        """Projected image features, L2-normalised with the norm clamped at 1e-12."""
        output = self.model.get_image_features(pixel_values=pixel_values.to(self.dtype))
        # transformers 5 returns an output object whose projected vector is pooler_output
        features = output.pooler_output if hasattr(output, "pooler_output") else output
        features = torch.nn.functional.normalize(features.float(), dim=-1, eps=1e-12)
        return features.cpu().numpy().astype(np.float32)


def load_clip_model(model_id: str, device: str, dtype: torch.dtype) -> PreTrainedModel:
    """A CLIPModel or SiglipModel (AutoModel by the checkpoint's model_type); other families
    are refused in one line (their preprocessing and pooling differ)."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(model_id)
    except Exception as exc:  # hub, file-system and config errors: "cannot load these weights"
        raise EmbedderLoadError(load_error_message(model_id, exc)) from exc
    family = getattr(config, "model_type", None)
    if family not in FAMILIES:
        raise EmbedderLoadError(
            f"model {model_id!r} is a {family!r} checkpoint; the clip embedder loads "
            f"{' and '.join(FAMILIES)} checkpoints (transformers CLIPModel, SiglipModel)"
        )
    try:
        model = AutoModel.from_pretrained(model_id, dtype=dtype)
    except Exception as exc:  # weights missing or unreadable
        raise EmbedderLoadError(load_error_message(model_id, exc)) from exc
    return model.to(device).eval()  # type: ignore[no-any-return]


def image_dim(model: PreTrainedModel) -> int:
    """Dimension of the image vector: CLIP's projection, SigLIP's vision head (hidden size)."""
    config = model.config
    if config.model_type == "siglip":
        return int(config.vision_config.hidden_size)
    return int(config.projection_dim or 0)


def load_error_message(model_id: str, exc: Exception) -> str:
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (
        f"cannot load CLIP weights {model_id!r} "
        f"({type(exc).__name__}: {first_line}). "
        "Fix: download them once with network access (HF_HUB_OFFLINE unset; set HF_HOME to "
        "choose the cache), or "
        "point --model at a local folder saved with save_pretrained, or use --embedder histogram."
    )


def read_preprocessor_config(model_id: str, family: str = "clip") -> dict[str, Any]:
    """The saved image-processor settings (mean, std, sizes); the family's defaults when there
    are none (OpenAI CLIP's; SigLIP's 224 x 224, mean/std 0.5, bilinear)."""
    # the PIL backends need no torchvision
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    kind = SiglipImageProcessorPil if family == "siglip" else CLIPImageProcessorPil
    try:
        processor = kind.from_pretrained(model_id)
    except Exception:  # no preprocessor_config.json next to the weights: the defaults
        if family != "siglip":
            return {}
        processor = SiglipImageProcessorPil()
    return {
        key: getattr(processor, key, None)
        for key in ("size", "crop_size", "resample", "rescale_factor", "image_mean", "image_std")
    }
