"""Vision towers: any transformers vision backbone behind one small contract.

A tower is built from a transformers config dict (its ``model_type`` is the declared type; fovea
never looks at a model's *name* to decide what it is), runs ``pixels (V, 3, S, S)`` and returns
every hidden state, so connectors can pick layers. No re-implementation: the modules are
transformers' own ``CLIPVisionModel``, ``SiglipVisionModel``, ``MLCDVisionModel``, ... The one
exception is UNICOM's ViT, which transformers lacks: towers/unicom.py writes it as a transformers
model registered with the Auto classes, so it goes through the same paths.

Families (``TOWER_FAMILIES``) carry the facts a config does not state, e.g. whether the sequence
starts with a CLS token. An unregistered ``model_type`` still works through ``AutoModel`` if the
config says ``has_cls``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from ..errors import CheckpointError, ConfigError, library_error_line
from ..registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureLevel:
    """One hidden state a tower offers, described before anything runs (timm's ``feature_info``):
    its channel width, its stride in pixels and the tokens before its grid. A ViT has one level per
    hidden state, all alike; a hierarchical tower (ConvNeXt) has one per stage, each its own."""

    width: int
    stride: int
    prefix_tokens: int = 0
    """Tokens before the patch grid (a CLS token); 0 for a feature map."""

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of this level for an input of `height` x `width` pixels."""
        return height // self.stride, width // self.stride


def vit_levels(config: PretrainedConfig, prefix: int) -> list[FeatureLevel]:
    """A ViT: the embeddings and every block's output, all of one width on the patch grid."""
    level = FeatureLevel(config.hidden_size, _as_int(config.patch_size), prefix)
    return [level] * (config.num_hidden_layers + 1)


def convnext_levels(config: PretrainedConfig, prefix: int) -> list[FeatureLevel]:
    """A ConvNeXt: the stem's output (stride ``patch_size``), then each stage's; stage 0 keeps the
    stem's stride, every later stage halves the grid with its downsampling layer."""
    stride = config.patch_size
    levels = [FeatureLevel(config.hidden_sizes[0], stride)]
    for index, width in enumerate(config.hidden_sizes):
        stride *= 2 if index else 1
        levels.append(FeatureLevel(width, stride))
    return levels


def run_whole(model: nn.Module, pixels: torch.Tensor, extra: dict) -> tuple[torch.Tensor, ...]:
    return tuple(
        model(pixel_values=pixels, output_hidden_states=True, return_dict=True, **extra).hidden_states
    )


def run_stages(model: nn.Module, pixels: torch.Tensor, extra: dict) -> tuple[torch.Tensor, ...]:
    """Stem and stages only, as ConvLLaVA runs its tower (the pooled LayerNorm never runs), each
    (V, C, H, W) map flattened row-major to (V, H*W, C) tokens."""
    out = model.encoder(model.embeddings(pixels), output_hidden_states=True, return_dict=True)
    return tuple(state.flatten(2).transpose(1, 2) for state in out.hidden_states)


def as_llava_runs_it(hf: dict, select_layer) -> dict:
    """The tower LLaVA's original code builds from this config: as it is (CLIP, MLCD)."""
    return dict(hf)


def siglip_as_llava_runs_it(hf: dict, select_layer) -> dict:
    """LLaVA-NeXT's SigLIP tower: its last block removed and no pooling head."""
    return {**hf, "num_hidden_layers": hf["num_hidden_layers"] - 1, "vision_use_head": False}


def convnext_as_llava_runs_it(hf: dict, select_layer) -> dict:
    """ConvLLaVA's ConvNeXt: ``mm_vision_select_layer: -2`` pops the last block of the last stage."""
    if select_layer != -2:
        return dict(hf)
    return {**hf, "depths": [*hf["depths"][:-1], hf["depths"][-1] - 1]}


@dataclass(frozen=True)
class TowerFamily:
    """Facts about one transformers vision model type that its config does not spell out."""

    has_cls: bool
    """Does the token sequence start with a CLS token?"""
    grid_kind: str = "vit"
    """``vit``: hidden states are (B, 1?+H*W, D) on a patch grid."""
    pooled_is_embedding: bool = False
    """Is the model's ``pooler_output`` already a trained embedding with its own head (UNICOM's
    flatten-FC-BN head)? Pretraining then adds no head of its own."""
    hidden_states_kwargs: dict = field(default_factory=dict)
    """Extra forward arguments when only the hidden states are wanted (UNICOM: ``pool=False``
    skips its BatchNorm embedding head)."""
    blocks: str = "encoder.layers"
    """Where the model's blocks sit (a ModuleList; hidden state i is block i's output). Its last
    name is how recipes name them as parts: ``tower.layers.A-B`` for a ViT's layers,
    ``tower.stages.A-B`` for a hierarchical tower's stages."""
    levels: Callable[[PretrainedConfig, int], list[FeatureLevel]] = vit_levels
    """Every hidden state's `FeatureLevel`, from the config alone (before anything runs)."""
    run: Callable[[nn.Module, torch.Tensor, dict], tuple[torch.Tensor, ...]] = run_whole
    """pixels -> every hidden state as (V, P+N, D) tokens."""
    attention: bool = True
    """Does it have attention layers (and so an ``attn_implementation`` to choose)?"""
    unused: tuple[str, ...] = ()
    """Top-level modules fovea never runs (ConvNeXt's pooled ``layernorm``): replaced by Identity,
    their weights ignored wherever they are found."""
    llava_runs: Callable[[dict, object], dict] = as_llava_runs_it
    """(hf config, ``mm_vision_select_layer``) -> the tower as the original LLaVA code runs it."""
    llava_selects: bool = True
    """Does the original LLaVA code take ``mm_vision_select_layer``'s hidden state? (Its SigLIP and
    ConvNeXt towers return their last state whatever the config says.)"""
    export_note: str = ""
    """What a user of a transformers export of this tower needs to know."""


TOWER_FAMILIES: Registry[TowerFamily] = Registry("tower type")
TOWER_FAMILIES.add("clip_vision_model", TowerFamily(has_cls=True), "CLIP / OpenCLIP / DFN / MLCD-L ViT")
TOWER_FAMILIES.add(
    "siglip_vision_model",
    TowerFamily(has_cls=False, llava_runs=siglip_as_llava_runs_it, llava_selects=False),
    "SigLIP ViT (no CLS token)",
)
TOWER_FAMILIES.add(
    "mlcd_vision_model",
    TowerFamily(
        has_cls=True,
        export_note="MLCD towers need transformers >= 4.51 (and vLLM's Transformers backend to serve)",
    ),
    "MLCD ViT-bigG with 2D RoPE",
)
TOWER_FAMILIES.add(
    "convnext",
    TowerFamily(
        has_cls=False, grid_kind="hierarchical", blocks="encoder.stages", levels=convnext_levels,
        run=run_stages, attention=False, unused=("layernorm",), llava_runs=convnext_as_llava_runs_it,
        llava_selects=False,
    ),
    "ConvNeXt (ConvLLaVA): one level per stage, each with its own width and stride",
)  # fmt: skip


@dataclass(kw_only=True)
class TowerConfig:
    """A vision tower: a transformers vision config plus what fovea needs to know about it."""

    hf_config: dict
    """transformers config of the vision model; ``model_type`` selects the class."""
    has_cls: bool | None = None
    """Leading CLS token? None: from the registered family (required for unregistered types)."""
    weights: str | None = None
    """Where pretrained weights live (hub id or directory); informational for built models."""
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if "model_type" not in self.hf_config:
            raise ValueError("hf_config needs a 'model_type' (e.g. clip_vision_model)")
        if self.has_cls is None and self.model_type not in TOWER_FAMILIES:
            raise ValueError(
                f"tower type {self.model_type!r} is not registered; set has_cls explicitly "
                f"(registered: {', '.join(TOWER_FAMILIES.names())})"
            )

    @property
    def model_type(self) -> str:
        return self.hf_config["model_type"]

    @property
    def cls_token(self) -> bool:
        return self.has_cls if self.has_cls is not None else TOWER_FAMILIES.get(self.model_type).has_cls

    def transformers_config(self) -> PretrainedConfig:
        kwargs = {k: v for k, v in self.hf_config.items() if k not in ("model_type", "transformers_version")}
        try:
            return AutoConfig.for_model(self.model_type, **kwargs)
        except (ValueError, TypeError, StrictDataclassError) as err:
            raise ConfigError(f"tower hf_config: {library_error_line(err)}") from None


@dataclass
class TowerOutput:
    """Everything a connector may need from one tower call."""

    hidden_states: tuple[torch.Tensor, ...]
    """Per layer (V, P+N, D): index 0 = embeddings, i = output of block i (transformers order)."""
    num_prefix_tokens: int
    """Tokens before the patch grid (1 for a CLS token, else 0)."""
    grid: tuple[int, int]
    """(rows, cols) of the patch grid, N = rows * cols."""
    extras: dict = field(default_factory=dict)


class VisionTower(nn.Module):
    """pixels (V, 3, S, S) -> TowerOutput with all hidden states."""

    def __init__(self, config: TowerConfig, model: nn.Module | None = None):
        super().__init__()
        self.config = config
        if model is None:
            hf = config.transformers_config()
            model = AutoModel.from_config(hf, **attention_kwargs(config))
        for name in self.family.unused:
            setattr(model, name, nn.Identity())
        self.model = model

    @property
    def hf_config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def width(self) -> int:
        """Channels of the last hidden state."""
        return self.feature_levels()[-1].width

    @property
    def num_layers(self) -> int:
        """Blocks (a ViT's layers, a ConvNeXt's stages): hidden states minus the embeddings."""
        return len(self.feature_levels()) - 1

    @property
    def patch_size(self) -> int:
        """Pixels per token side of the last hidden state (a ConvNeXt's overall stride)."""
        return self.feature_levels()[-1].stride

    @property
    def image_size(self) -> int:
        return _as_int(self.hf_config.image_size)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    @property
    def family(self) -> TowerFamily:
        """The registered facts of this tower's type (defaults for an unregistered type)."""
        return family_of(self.config)

    def blocks(self) -> tuple[str, nn.ModuleList | None]:
        """(path inside ``self.model``, the ModuleList there) of the tower's blocks."""
        path = self.family.blocks
        module = self.model
        for name in path.split("."):
            module = getattr(module, name, None)
        return path, module if isinstance(module, nn.ModuleList) else None

    def feature_levels(self) -> list[FeatureLevel]:
        """Every hidden state's level, in `TowerOutput.hidden_states` order (0 = embeddings)."""
        return self.family.levels(self.hf_config, 1 if self.config.cls_token else 0)

    def forward(self, pixels: torch.Tensor, depth: int | None = None) -> TowerOutput:
        """All hidden states, or (with `depth`) only those of the embeddings and the first `depth`
        blocks: a connector that reads layer -2 need not run the last block (LLaVA's default)."""
        first = next(self.parameters())
        pixels = pixels.to(device=first.device, dtype=first.dtype)
        family = self.family
        with _shortened(self.model, self.blocks()[0], depth):
            states = family.run(self.model, pixels, family.hidden_states_kwargs)
        return TowerOutput(
            hidden_states=states,
            num_prefix_tokens=1 if self.config.cls_token else 0,
            grid=self.grid(pixels.shape[-2], pixels.shape[-1]),
        )

    @classmethod
    def from_pretrained(cls, config: TowerConfig, source: str) -> VisionTower:
        """Build the tower with transformers weights from a hub id or a local directory.

        transformers' own loader does the work, so a full CLIP checkpoint (text + vision) yields
        its vision half, and key layouts of older transformers versions are remapped.
        """
        hf = config.transformers_config()
        model_cls = MODEL_MAPPING[type(hf)]
        try:
            model = model_cls.from_pretrained(source, **attention_kwargs(config))
        except OSError as err:
            raise ConfigError(f"tower weights {source!r}: {str(err).splitlines()[0]}") from None
        return cls(config, model)

    def load_weights(self, path: str | Path) -> None:
        """Fill the tower from a weights file in any published form (see towers/weights.py);
        every tensor must fit, and every tower tensor must be given."""
        from .weights import tower_state

        keys = set(self.model.state_dict())
        state = tower_state(Path(path), keys, self.family.unused)
        unknown = sorted(set(state) - keys)
        missing = sorted(keys - set(state))
        if unknown or missing:
            what = f"unexpected {unknown[0]!r}" if unknown else f"missing {missing[0]!r}"
            raise CheckpointError(f"{path}: does not fit the {self.config.model_type} tower ({what})")
        try:
            self.model.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: {str(err).splitlines()[-1].strip()}") from None


def family_of(config: TowerConfig) -> TowerFamily:
    """The registered facts of a tower config's type (defaults for an unregistered type)."""
    known = config.model_type in TOWER_FAMILIES
    return TOWER_FAMILIES.get(config.model_type) if known else TowerFamily(has_cls=config.cls_token)


def levels_of(config: TowerConfig) -> list[FeatureLevel]:
    """A tower config's feature levels without building the tower (see `VisionTower.feature_levels`)."""
    return family_of(config).levels(config.transformers_config(), 1 if config.cls_token else 0)


def attention_kwargs(config: TowerConfig) -> dict:
    """``attn_implementation`` for towers with attention (transformers refuses it for ConvNeXt)."""
    return {"attn_implementation": config.attn_implementation} if family_of(config).attention else {}


@contextmanager
def _shortened(model: nn.Module, path: str, depth: int | None):
    """Temporarily run only the first `depth` blocks of the ModuleList at `path` (a ViT's layers,
    a ConvNeXt's stages). The states returned are exactly those of the full model's first blocks."""
    *parents, name = path.split(".")
    owner = model
    for parent in parents:
        owner = getattr(owner, parent, None)
    blocks = getattr(owner, name, None)
    if depth is None or not isinstance(blocks, nn.ModuleList) or depth >= len(blocks):
        yield
        return
    setattr(owner, name, blocks[:depth])
    try:
        yield
    finally:
        setattr(owner, name, blocks)


def _as_int(value) -> int:
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)
