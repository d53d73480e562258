"""The teacher of `fovea pretrain features` (and of region features and probes): a tower or a
two-tower CLIP that turns images (and captions, for joint features) into unit embeddings.

The embedding is the one the model itself pools (``pooler_output``: CLIP and MLCD the post-LN CLS
token, SigLIP its attention-pool head), or a two-tower CLIP directory's projected
``get_image_features``. UNICOM clusters *joint* image and text features but does not say how it
fuses them; fovea's choice (``joint``) is the unit mean direction
``normalise(normalise(image) + normalise(text))``, which weighs both equally whatever their norms.
`Teacher.patch_tokens` gives the last layer's patch tokens instead, for ROI pooling.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..dtypes import DTYPES
from ..errors import ConfigError
from ..imaging.processor import ImageConfig, ImageProcessor
from ..towers.presets import build_tower, resolve_tower

VIEWS = ("square", "pad")


class Teacher:
    """Images (and captions, for joint features) -> (B, D) float32 unit embeddings."""

    def __init__(self, model, processor: ImageProcessor, *, clip: bool, tokenizer=None):
        self.model, self.processor = model, processor
        self.clip, self.tokenizer = clip, tokenizer
        self.joint = tokenizer is not None
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        # the width of what the model pools (a projection, UNICOM's embedding head) is not always in
        # its config under one name: one blank image tells
        blank = torch.zeros(1, 3, processor.config.size, processor.config.size)
        self.dim = self.embed(blank, [""] if self.joint else None).shape[1]

    @torch.inference_mode()
    def embed(self, pixels: torch.Tensor, captions: list[str] | None = None) -> torch.Tensor:
        pixels = pixels.to(self.device, self.dtype)
        if not self.clip:
            pooled = self.model(pixel_values=pixels).pooler_output
            if pooled is None:
                raise ConfigError("this tower gives no pooled output (its pooler_output is None)")
            return F.normalize(pooled.float(), dim=-1)
        image = F.normalize(_pooled(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)
        if not self.joint:
            return image
        limit = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(
            captions, padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        text = self.model.get_text_features(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        )
        return F.normalize(image + F.normalize(_pooled(text).float(), dim=-1), dim=-1)

    @torch.inference_mode()
    def patch_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, rows * cols, D) float32 last-layer patch tokens (CLS left out) and the grid."""
        model = self.model.vision_model if self.clip else self.model
        states = model(pixel_values=pixels.to(self.device, self.dtype)).last_hidden_state
        patch = model.config.patch_size
        grid = (pixels.shape[-2] // patch, pixels.shape[-1] // patch)
        return states[:, states.shape[1] - grid[0] * grid[1] :].float(), grid


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns the projected embedding as the output's pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def is_two_tower_clip(spec: str) -> bool:
    config = Path(spec) / "config.json"
    return config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "clip"


@dataclass(frozen=True)
class TeacherSpec:
    """Which teacher, and how it sees images: everything that changes the features."""

    tower: str
    """A tower preset, hub id or tower directory (pooled output), or a two-tower CLIP directory."""
    pretrained: bool = True
    weights: str | None = None
    joint: bool = False
    view: str = "square"
    """``square``: the tower's own preprocessing (CLIP crops, SigLIP squashes); ``pad``: LLaVA's."""
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.view not in VIEWS or self.dtype not in DTYPES:
            raise ConfigError(f"view must be one of {VIEWS} and dtype one of {tuple(DTYPES)}")
        if is_two_tower_clip(self.tower):
            if self.weights is not None or not self.pretrained:
                raise ConfigError(f"{self.tower}: a two-tower CLIP directory carries its own weights")
        elif self.joint:
            raise ConfigError(
                f"joint features need a two-tower CLIP directory (config model_type 'clip', with its "
                f"tokenizer); {self.tower} is a vision tower"
            )

    def settings(self) -> dict:
        """What run.json records of the teacher (an unknown tower is refused here, before any work)."""
        clip, preset = is_two_tower_clip(self.tower), resolve_tower(self.tower)
        weights = (
            os.path.abspath(self.weights) if self.weights else "published" if self.pretrained else "random"
        )
        if self.joint:
            embedding = "normalise(normalise(image_embeds) + normalise(text_embeds))"
        else:
            embedding = "image_embeds" if clip else "pooler_output"
        return {
            "tower": os.path.abspath(self.tower) if Path(self.tower).is_dir() else self.tower,
            "weights": weights,
            "embedding": embedding,
            "joint": self.joint,
            "image": {**preset.image, "mode": self.view},
            "dtype": self.dtype,
        }


def build_teacher(spec: TeacherSpec, device: str | torch.device = "cpu") -> Teacher:
    """The teacher model on `device`, with the image processor of its preprocessing."""
    clip = is_two_tower_clip(spec.tower)
    if clip:
        model, tokenizer = _load_clip(Path(spec.tower), spec.joint)
        image = resolve_tower(spec.tower).image
    else:
        with torch.random.fork_rng(devices=[]):  # random weights, the same in every process
            torch.manual_seed(0)
            built, image = build_tower(spec.tower, pretrained=spec.pretrained, weights=spec.weights)
        model, tokenizer = built.model, None
    model.to(device=device, dtype=DTYPES[spec.dtype]).eval()
    processor = ImageProcessor(ImageConfig(**image, mode=spec.view))
    return Teacher(model, processor, clip=clip, tokenizer=tokenizer)


def _load_clip(path: Path, joint: bool):
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path) if joint else None
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{path}: cannot load the CLIP model and its tokenizer ({str(err).splitlines()[0]})"
        ) from None
    return model, tokenizer
