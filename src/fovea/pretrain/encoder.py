"""The encoder that cluster discrimination trains: a fovea tower plus an embedding head.

The embedding is the tower's pooled output (transformers' ``pooler_output``: CLIP's and MLCD's
post-LayerNorm CLS, SigLIP's attention-pooling head) mapped by a bias-free linear head, as CLIP's
``visual_projection`` maps it; UNICOM's ViT ends in its own flatten-FC-BN head, so nothing is
added there (`TowerFamily.pooled_is_embedding`). The loss normalises the embedding.

With RICE's region layers (`add_regions`), the forward also takes each image's regions as a
visibility mask over its patch tokens and returns one embedding per region beside the image's:
the last hidden state's patch tokens (the CLS token left out) go through `regions.RegionLayers`
and a region head like the image head. The exported tower is the plain ViT either way; the region
layers and head are saved beside it (``region_layers.safetensors``), as the head is.

`export_tower` writes the trained tower as a transformers directory with its image-processor
settings, which every fovea command takes as a tower (`fovea train` with ``model.tower: DIR``,
`fovea extract --tower DIR`, `fovea pretrain probe --tower DIR`); the head is saved beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import ConfigError
from ..imaging.processor import ImageConfig
from ..towers.base import TOWER_FAMILIES, VisionTower
from .regions import RegionConfig, RegionLayers

HEAD_FILE = "embedding_head.safetensors"
REGION_FILE = "region_layers.safetensors"


class Encoder(nn.Module):
    """pixels (B, 3, S, S) -> embeddings (B, D), not normalised."""

    def __init__(self, tower: VisionTower, embedding_dim: int | None = None):
        super().__init__()
        self.tower = tower
        family = (
            TOWER_FAMILIES.get(tower.config.model_type) if tower.config.model_type in TOWER_FAMILIES else None
        )
        if family is not None and family.pooled_is_embedding:
            if embedding_dim is not None:
                raise ConfigError(
                    f"encoder.embedding_dim: a {tower.config.model_type} tower has its own embedding head; "
                    "leave it null"
                )
            self.head: nn.Module = nn.Identity()
            self.embedding_dim = int(tower.hf_config.embedding_size)
        else:
            self.embedding_dim = embedding_dim or tower.width
            self.head = nn.Linear(tower.width, self.embedding_dim, bias=False)
            nn.init.normal_(self.head.weight, std=tower.width**-0.5)

        self.regions: RegionLayers | None = None

    def add_regions(self, config: RegionConfig) -> None:
        """RICE's region layers and region head (random), after the tower's global layers."""
        tower = self.tower
        if tower.family.grid_kind != "vit" or not hasattr(tower.hf_config, "num_attention_heads"):
            raise ConfigError(
                f"regions: a {tower.config.model_type} tower has no ViT patch grid for region layers"
            )
        hf = tower.hf_config
        self.regions = RegionLayers(
            config, tower.width, hf.num_attention_heads, getattr(hf, "layer_norm_eps", 1e-5)
        )
        self.region_head = nn.Linear(tower.width, self.embedding_dim, bias=False)
        nn.init.normal_(self.region_head.weight, std=tower.width**-0.5)

    def forward(self, pixels: torch.Tensor, visible: torch.Tensor | None = None):
        """pixels (B, 3, S, S) -> embeddings (B, E); with `visible` (B, N, T) bool over the T patch
        tokens, also the region embeddings (B, N, E)."""
        first = next(self.tower.parameters())
        out = self.tower.model(
            pixel_values=pixels.to(device=first.device, dtype=first.dtype), return_dict=True
        )
        embeddings = self.head(out.pooler_output)
        if visible is None:
            return embeddings
        states = out.last_hidden_state  # (B, prefix + T, D)
        tokens = visible.shape[2]
        if self.regions is None or states.shape[1] < tokens:
            raise ValueError(f"regions over {tokens} patches, but the tower gives {states.shape[1]} tokens")
        regions = self.regions(states[:, states.shape[1] - tokens :], visible.to(states.device))
        return embeddings, self.region_head(regions)


def export_tower(encoder: Encoder, image: ImageConfig, out: Path) -> Path:
    """Write the tower as a transformers directory fovea reads as a tower, plus the head."""
    out.mkdir(parents=True, exist_ok=True)
    encoder.tower.model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(processor_settings(image), indent=2))
    if isinstance(encoder.head, nn.Linear):
        save_file({"weight": encoder.head.weight.detach().float().cpu().contiguous()}, str(out / HEAD_FILE))
    if encoder.regions is not None:
        parts = {f"layers.{k}": v for k, v in encoder.regions.state_dict().items()}
        parts |= {f"head.{k}": v for k, v in encoder.region_head.state_dict().items()}
        save_file(
            {k: v.detach().float().cpu().contiguous() for k, v in parts.items()}, str(out / REGION_FILE)
        )
    return out


def processor_settings(image: ImageConfig) -> dict:
    """transformers image-processor settings for `image` (what `read_processor_settings` reads back)."""
    side = image.size
    crop = image.resize == "shortest_edge_crop"
    resample = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}[image.resample]
    return {
        "image_processor_type": "CLIPImageProcessor" if crop else "SiglipImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": side} if crop else {"height": side, "width": side},
        "do_center_crop": crop,
        "crop_size": {"height": side, "width": side},
        "resample": resample,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(image.mean),
        "image_std": list(image.std),
        "do_convert_rgb": True,
    }
