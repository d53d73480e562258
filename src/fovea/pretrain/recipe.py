"""Recipes of `fovea pretrain train`: a vision encoder trained by cluster discrimination.

    encoder:  the tower to train (any preset, hub id or directory; random or from released weights)
              and its embedding head
    data:     the images (a FEATS folder from `fovea pretrain features`: their references and
              order) and their labels (a LABELS folder from `fovea pretrain assign`)
    loss:     MLCD's multi-label loss or UNICOM's margin softmax, through PartialFC
    regions:  RICE (optional): region layers and the object- and OCR-region losses
    optim:    AdamW, batch, length
    run:      the same run section as `fovea train` (output, seed, precision, engine, checkpoints)

Defaults are the published ones (reference unicom-mlcd.md §5, §7): AdamW lr 1e-3, weight decay
0.2, 8 labels, negatives sampled at r = 0.1, scale 64, margin 0.3 on the positives, a global batch
of 32K (set `micro_batch_size` to what one process holds) and 32 epochs. See
configs/pretrain/*.yaml.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import apply_overrides, from_dict, load_yaml
from ..errors import ConfigError
from ..train.recipe import RunSpec
from .losses import LossConfig, MLCDLoss
from .regions import RegionConfig


@dataclass(kw_only=True)
class EncoderSpec:
    tower: str
    """Tower preset, hub id or directory (see `fovea list`): what is trained."""
    pretrained: bool = False
    """Start from the tower's published weights (fine-tuning) instead of random ones."""
    weights: str | None = None
    """Start from a weights file in any published form (e.g. UNICOM's FP16-ViT-B-32.pt)."""
    tower_config: dict = field(default_factory=dict)
    """transformers config fields over the preset's, for a new architecture trained from scratch
    (e.g. ``image_size: 224`` to train MLCD's ViT-L/14 at 224 as published)."""
    embedding_dim: int | None = None
    """Width of the embedding the loss sees. A linear head (no bias) maps the tower's pooled output
    to it; None: the tower's width. UNICOM's ViT has its own head, so this must be None there."""
    image: dict = field(default_factory=dict)
    """ImageConfig fields over the tower's preprocessing (size, mean, std, resample, resize)."""
    gradient_checkpointing: bool = False


@dataclass(kw_only=True)
class DataSpec:
    features: str
    """A FEATS folder from `fovea pretrain features`: which images, in which order."""
    labels: str
    """A LABELS folder from `fovea pretrain assign` on those features."""
    labels_per_image: int | None = None
    """Use the first L labels of each image (most similar first); None: every column (MLCD: 8)."""


@dataclass(kw_only=True)
class RegionSpec:
    """RICE: region layers after the ViT, trained with region losses beside the image-level one.
    The paper gives no weights for combining the losses: each is a setting, 1.0 by default (a sum)."""

    features: str
    """A REGIONS folder from `fovea pretrain regions` on (some of) the images of `data.features`."""
    labels: str | None = None
    """A LABELS folder from `fovea pretrain assign --labels 1` on REGIONS: each object region's
    centre. None: no object-region loss."""
    ocr: bool = True
    """The OCR-region loss on REGIONS' token ids (when it holds any: `--tokenizer` was given)."""
    attention: RegionConfig = field(default_factory=RegionConfig)
    """Region layers, N regions per image, mask coverage (regions.py)."""
    object_loss: LossConfig = field(default_factory=MLCDLoss)
    """Single positive (the region's centre): MLCD's form is the paper's Eq. 3."""
    ocr_loss: LossConfig = field(default_factory=MLCDLoss)
    """Multi-positive (the text's tokens), MLCD's form (Eq. 4); must be a multi-label loss."""
    image_weight: float = 1.0
    object_weight: float = 1.0
    ocr_weight: float = 1.0


@dataclass(kw_only=True)
class OptimSpec:
    lr: float = 1e-3
    centres_lr: float | None = None
    """Learning rate of the class centres (None: `lr`)."""
    weight_decay: float = 0.2
    warmup_ratio: float = 0.03
    batch_size: int = 32768
    """Images per optimizer step, over all processes and accumulation steps."""
    micro_batch_size: int | None = None
    """Images per forward pass per process (default: batch_size / processes)."""
    epochs: float = 32.0
    max_steps: int | None = None
    grad_clip: float | None = None


@dataclass(kw_only=True)
class PretrainRecipe:
    encoder: EncoderSpec
    data: DataSpec
    loss: LossConfig = field(default_factory=MLCDLoss)
    """A registered loss (``type: mlcd`` or ``margin``) with its own fields and PartialFC's rates."""
    regions: RegionSpec | None = None
    optim: OptimSpec = field(default_factory=OptimSpec)
    run: RunSpec = field(default_factory=lambda: RunSpec(out_dir="runs/pretrain"))


def load_pretrain_recipe(path: str | Path, overrides: list[str] = ()) -> PretrainRecipe:
    """A recipe from YAML with ``a.b=value`` overrides; relative data paths resolve against the file."""
    data = apply_overrides(load_yaml(path), list(overrides))
    recipe = from_dict(PretrainRecipe, data)
    base = Path(path).parent
    sections = [(recipe.data, ("features", "labels")), (recipe.regions, ("features", "labels"))]
    for section, keys in sections:
        for key in keys if section is not None else ():
            value = getattr(section, key)
            if (
                value
                and not Path(value).is_absolute()
                and not Path(value).exists()
                and (base / value).exists()
            ):
                setattr(section, key, str(base / value))
    check_pretrain_recipe(recipe)
    return recipe


def check_pretrain_recipe(recipe: PretrainRecipe) -> None:
    """The checks that need no file: every number in range, named by its dotted path."""
    loss, optim, run = recipe.loss, recipe.optim, recipe.run  # the loss checked its own fields
    for key in ("lr", "batch_size", "epochs"):
        _check(_positive(getattr(optim, key)), f"optim.{key}", "must be positive", getattr(optim, key))
    for key in ("centres_lr", "micro_batch_size", "max_steps", "grad_clip"):
        value = getattr(optim, key)
        _check(value is None or _positive(value), f"optim.{key}", "must be positive or null", value)
    _check(optim.weight_decay >= 0, "optim.weight_decay", "must be at least 0", optim.weight_decay)
    _check(0 <= optim.warmup_ratio < 1, "optim.warmup_ratio", "must be in [0, 1)", optim.warmup_ratio)
    encoder = recipe.encoder
    if encoder.tower_config and (encoder.pretrained or encoder.weights):
        raise ConfigError(
            "encoder.tower_config: changes the architecture, so it needs random weights "
            "(pretrained: false and no weights)"
        )
    dim, per_image = encoder.embedding_dim, recipe.data.labels_per_image
    _check(dim is None or dim >= 1, "encoder.embedding_dim", "must be positive or null", dim)
    _check(
        per_image is None or per_image >= 1, "data.labels_per_image", "must be positive or null", per_image
    )
    if not loss.multi_label:
        _check(
            per_image in (None, 1), "data.labels_per_image", f"must be 1 for loss.type {loss.type}", per_image
        )
    _check_regions(recipe.regions)
    # the class centres live outside accelerate (one shard per process), so outside its fp16 loss scaling
    _check(run.precision != "fp16", "run.precision", "must be bf16 or no", "fp16")
    _check(
        run.distributed == "ddp",
        "run.distributed",
        "must be ddp (PartialFC shards the classes itself)",
        run.distributed,
    )
    for key in ("log_every", "save_every", "keep_last"):
        _check(getattr(run, key) >= 1, f"run.{key}", "must be at least 1", getattr(run, key))


def _check_regions(spec: RegionSpec | None) -> None:
    if spec is None:
        return
    for key in ("image_weight", "object_weight", "ocr_weight"):
        value = getattr(spec, key)
        _check(value >= 0 and math.isfinite(value), f"regions.{key}", "must be at least 0", value)
    _check(spec.labels is not None or spec.ocr, "regions", "needs labels (object regions) or ocr: true", None)
    _check(
        spec.ocr_loss.multi_label, "regions.ocr_loss.type", "must be a multi-label loss", spec.ocr_loss.type
    )


def _positive(value) -> bool:
    return value > 0 and math.isfinite(value)


def _check(ok: bool, path: str, message: str, value) -> None:
    if not ok:
        raise ConfigError(f"{path}: {message}, got {value!r}")
