"""MMFuser: a multi-layer fuser built from deformable attention (Cao et al., arXiv 2410.11829).

Follows ``MSCrossAttnBlock`` in yuecao0119/MMFuser (llava/model/multimodal_projector/ms_cross_attn.py).
The last selected layer is the *query* (LLaVA-1.5's penultimate layer); every other selected layer
is a *level* that a multi-scale deformable cross-attention samples from; a one-level deformable
self-attention refines the result, and both are added back to the query through zero-initialised
per-channel scales (LayerScale, as in ViT-Adapter's injector)::

    ca  = CrossAttn(query_norm(q), feat_norm(cat(levels)))
    out = q + gamma1 * (ca + gamma2 * SelfAttn(norm1(ca)))

so at initialisation the block is an exact identity and a model with it equals the plain projector
on the query layer. The original recipe is ``connector: {layers: [-22, -17, -12, -7, -2], fuser:
mmfuser}`` (4 levels + query); any number of levels >= 1 works here, and levels may have their own
grids (multi-scale: each level is sampled at the same normalised location, offsets are in pixels of
that level), where the original assumes four square grids of one size.

The attentions are transformers' own ``DeformableDetrMultiscaleDeformableAttention`` (same four
Linear names and shapes as Deformable-DETR's ``MSDeformAttn``, so the original block's weights map
key for key). Its weight init lives in ``DeformableDetrPreTrainedModel._init_weights``, not in the
module, so it is done here, as the original's ``MSDeformAttn._reset_parameters`` does.

Precision: as in the original, the Linears, LayerNorms and softmax run in the model's dtype, the
reference points (hence the sampling locations) are fp32, and the sampling core (grid_sample and
the weighted sum over levels and points) runs in fp32 on the values, locations and weights — the
original's CUDA op does this; transformers' pure-PyTorch core would run in the value's dtype, so its
core submodule (``.attn``, no parameters) is replaced by `_Float32Core`, which casts in and out.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrMultiscaleDeformableAttention,
    MultiScaleDeformableAttention,
)

from ..errors import ConfigError
from .fusers import FUSERS, Fuser, FuserConfig, FuserInput


@dataclass(kw_only=True)
class MMFuserConfig(FuserConfig):
    type: str = "mmfuser"
    heads: int = 16
    """Attention heads of both deformable attentions (the original hard-codes 16)."""
    points: int = 4
    """Sampling points per head and level (the original hard-codes 4)."""
    eps: float = 1e-6
    """Epsilon of the three LayerNorms (the original's ``norm_layer``)."""


class _Float32Core(MultiScaleDeformableAttention):
    """transformers' sampling core, run in fp32 whatever the model dtype (as the original's CUDA
    op); the result returns in the value's dtype, ready for ``output_proj``."""

    def forward(self, value, shapes, shapes_list, starts, locations, weights, im2col_step):
        out = super().forward(
            value.float(), shapes, shapes_list, starts, locations.float(), weights.float(), im2col_step
        )
        return out.to(value.dtype)


def _deformable_attention(width: int, levels: int, heads: int, points: int) -> nn.Module:
    """One deformable attention over `levels` levels, initialised as ``MSDeformAttn._reset_parameters``."""
    config = DeformableDetrConfig(
        d_model=width, num_feature_levels=levels, encoder_attention_heads=heads, encoder_n_points=points
    )
    with warnings.catch_warnings():  # "head width should be a power of 2": advice for the CUDA op only
        warnings.simplefilter("ignore", UserWarning)
        attention = DeformableDetrMultiscaleDeformableAttention(config, num_heads=heads, n_points=points)
    attention.attn = _Float32Core()
    with torch.no_grad():
        # offsets start on a star: head m looks along angle 2*pi*m/H, point k at k+1 pixels
        # (on the square's border: (cos, sin) / max(|cos|, |sin|)), the same on every level
        theta = torch.arange(heads, dtype=torch.float32) * (2.0 * math.pi / heads)
        star = torch.stack([theta.cos(), theta.sin()], -1)  # (H, 2) as (x, y)
        star = star / star.abs().max(-1, keepdim=True)[0]
        star = star.view(heads, 1, 1, 2).repeat(1, levels, points, 1)  # (H, L, P, 2)
        star *= torch.arange(1, points + 1, dtype=torch.float32).view(1, 1, points, 1)
        nn.init.zeros_(attention.sampling_offsets.weight)
        attention.sampling_offsets.bias.copy_(star.flatten())  # index ((m*L + l)*P + k)*2 + c
        nn.init.zeros_(attention.attention_weights.weight)
        nn.init.zeros_(attention.attention_weights.bias)
        for linear in (attention.value_proj, attention.output_proj):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
    return attention


def reference_points(grid: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Centre of each cell of a (rows, cols) grid, normalised to [0, 1] as (x, y): (1, N, 1, 2) fp32,
    in row-major token order (Deformable-DETR's ``get_reference_points`` without valid ratios)."""
    rows, cols = grid
    y, x = torch.meshgrid(
        torch.linspace(0.5, rows - 0.5, rows, dtype=torch.float32, device=device),
        torch.linspace(0.5, cols - 0.5, cols, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return torch.stack([x.reshape(-1) / cols, y.reshape(-1) / rows], -1)[None, :, None]


@FUSERS.register("mmfuser", "MMFuser: deformable cross-attention from earlier layers into the last one")
class MMFuser(Fuser):
    config_class = MMFuserConfig

    def __init__(self, config: MMFuserConfig, widths: list[int]):
        super().__init__()
        _check(config, widths)
        self.config, self.widths = config, list(widths)
        width, levels = widths[-1], len(widths) - 1
        # registration order = the original's state-dict order
        self.gamma1 = nn.Parameter(torch.zeros(width))
        self.gamma2 = nn.Parameter(torch.zeros(width))
        self.cross_attn = _deformable_attention(width, levels, config.heads, config.points)
        self.query_norm = nn.LayerNorm(width, eps=config.eps)
        self.feat_norm = nn.LayerNorm(width, eps=config.eps)
        self.norm1 = nn.LayerNorm(width, eps=config.eps)
        self.self_attn = _deformable_attention(width, 1, config.heads, config.points)

    def out_width(self) -> int:
        return self.widths[-1]

    def out_grid(self, grids: list[tuple[int, int]]) -> tuple[int, int]:
        return grids[-1]  # the query's grid; the levels may have others

    def forward(self, inputs: FuserInput) -> torch.Tensor:
        if len(inputs.layers) != len(self.widths) or len(inputs.grids) != len(self.widths):
            raise ValueError(
                f"fuser mmfuser: built for {len(self.widths)} layers, got {len(inputs.layers)} layers "
                f"and {len(inputs.grids)} grids"
            )
        for layer, (rows, cols) in zip(inputs.layers, inputs.grids):
            if layer.shape[1] != rows * cols:  # e.g. a kept CLS token: MMFuser samples grids only
                raise ValueError(
                    f"fuser mmfuser: a {rows}x{cols} grid has {rows * cols} tokens, got {layer.shape[1]}"
                )
        *levels, query = inputs.layers  # each (V, N_l, D); query (V, N, D)
        *level_grids, query_grid = inputs.grids
        ref = reference_points(query_grid, query.device)  # (1, N, 1, 2) fp32, shared by both attentions
        features = torch.cat(levels, dim=1)  # L x (V, N_l, D) -> (V, sum N_l, D)
        ca = _attend(self.cross_attn, self.query_norm(query), self.feat_norm(features), ref, level_grids)
        normed = self.norm1(ca)
        sa = _attend(self.self_attn, normed, normed, ref, [query_grid])
        return query + self.gamma1 * (ca + self.gamma2 * sa)  # residual on the un-normalised query


def _attend(
    attention: nn.Module,
    query: torch.Tensor,
    value: torch.Tensor,
    ref: torch.Tensor,
    grids: list[tuple[int, int]],
) -> torch.Tensor:
    """Deformable attention of `query` (V, N, D) over the levels in `value` (V, sum N_l, D)."""
    grids = [(int(rows), int(cols)) for rows, cols in grids]
    shapes = torch.tensor(grids, dtype=torch.long, device=query.device)  # (L, 2) as (h, w)
    sizes = shapes.prod(-1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])  # first token of each level
    ref = ref.expand(query.shape[0], -1, len(grids), -1)  # (1, N, 1, 2) -> (V, N, L, 2), no copy
    out, _ = attention(
        hidden_states=query,
        encoder_hidden_states=value,
        reference_points=ref,
        spatial_shapes=shapes,
        spatial_shapes_list=grids,
        level_start_index=starts,
    )
    return out  # (V, N, D)


def _check(config: MMFuserConfig, widths: list[int]) -> None:
    if len(widths) < 2:
        raise ConfigError(
            f"fuser mmfuser: needs at least 2 selected layers (levels, then the query), got {len(widths)}; "
            "the original selects connector.layers: [-22, -17, -12, -7, -2]"
        )
    if len(set(widths)) > 1:
        raise ConfigError(f"fuser mmfuser: every selected layer must have one width, got {widths}")
    if config.heads < 1 or config.points < 1:
        raise ConfigError(
            f"fuser mmfuser: heads and points must be >= 1, got {config.heads} and {config.points}"
        )
    if widths[0] % config.heads:
        raise ConfigError(f"fuser mmfuser: width {widths[0]} is not divisible by heads={config.heads}")
    if config.eps <= 0:
        raise ConfigError(f"fuser mmfuser: eps must be > 0, got {config.eps}")
