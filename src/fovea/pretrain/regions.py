"""RICE's region attention (Xie et al., "Region-based Cluster Discrimination", ICCV 2025, §3.2).

After the ViT's global layers, each image has N regions (boxes or masks). One query per region
attends to the image's tokens through a visibility mask, 0 inside the region and -inf outside:
``R = softmax(Q K^T / sqrt(d) + M) V``; a few such layers give each region a fixed-length
embedding, scored against region cluster centres (objects) or text-token centres (OCR).

What the paper leaves open, and what fovea chose (each a `RegionConfig` setting):

* **Where the queries start**: a learned region-query vector, the same for every region (the
  paper's "region class embedding"). Not the image's CLS state: that has seen the whole image, and
  a region's embedding must not depend on what lies outside it.
* **What the region layers read**: the token states the ViT's last global layer gives, the same
  at every region layer; only the queries are updated (cross-attention blocks: pre-LayerNorm
  attention and MLP, residuals, as a ViT block). So a region's embedding depends on the tokens
  inside it and on nothing outside, however many region layers there are (tested), and the
  exported ViT is the plain one, as the released RICE-L-560 is.
* **How many region layers**: `layers`, 2 by default (the paper: "the later layers").
* **Which patches a region sees**: a box sees the patches whose centre lies inside it; a mask
  sees the patches it covers at least `coverage` of (0.5). Either sees at least the one patch it
  covers most, so no region is blind. The CLS token is never visible to a region.
* **N regions per image** (`regions`, the paper's best 10): a random N of more, or all of fewer
  resampled with replacement up to N (§3.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


@dataclass(kw_only=True)
class RegionConfig:
    layers: int = 2
    regions: int = 10
    heads: int | None = None
    """Attention heads (None: the tower's own count)."""
    mlp_ratio: float = 4.0
    coverage: float = 0.5
    """A mask sees a patch when it covers at least this fraction of it."""

    def __post_init__(self) -> None:
        if self.layers < 1 or self.regions < 1:
            raise ValueError(f"layers and regions: expected at least 1, got {self.layers} and {self.regions}")
        if not 0.0 < self.coverage <= 1.0:
            raise ValueError(f"coverage: expected a fraction in (0, 1], got {self.coverage}")


def box_visibility(boxes: torch.Tensor, image_size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """(N, 4) boxes ``x0, y0, x1, y1`` in pixels of an image of `image_size` (height, width) ->
    (N, rows * cols) bool: the patches of the token grid whose centre lies in each box, and at
    least the patch holding the box's centre."""
    rows, cols = grid
    height, width = image_size
    ys = (torch.arange(rows, dtype=torch.float32) + 0.5) * height / rows
    xs = (torch.arange(cols, dtype=torch.float32) + 0.5) * width / cols
    x0, y0, x1, y1 = (boxes[:, i, None, None].float() for i in range(4))
    inside = (
        (ys[None, :, None] >= y0)
        & (ys[None, :, None] < y1)
        & (xs[None, None, :] >= x0)
        & (xs[None, None, :] < x1)
    )
    centre_row = (((y0 + y1) / 2) * rows / height).long().clamp(0, rows - 1).view(-1)
    centre_col = (((x0 + x1) / 2) * cols / width).long().clamp(0, cols - 1).view(-1)
    inside[torch.arange(len(boxes)), centre_row, centre_col] = True
    return inside.flatten(1)


def view_boxes(
    boxes: torch.Tensor, image_size: tuple[int, int], side: int, resize: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes in an image's pixels -> (boxes in its square view's pixels, kept): the view the image
    processor makes (`ImageConfig.resize`: ``squash`` to side x side, or ``shortest_edge_crop``:
    shortest edge to `side`, the other truncated, then the centre `side` x `side`). Boxes are
    clipped to the view; one the crop leaves with no area is not kept (the caller counts it)."""
    (sx, sy), (left, top), _ = _view(image_size, side, resize)
    scaled = boxes.float() * torch.tensor([sx, sy, sx, sy]) - torch.tensor([left, top, left, top])
    clipped = scaled.clamp(0, side)
    kept = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, kept


def view_mask(mask: np.ndarray, side: int, resize: str) -> torch.Tensor:
    """An (H, W) bool mask of an image -> (side, side) bool: the same square view as `view_boxes`
    (nearest-neighbour resize, then the centre crop)."""
    height, width = mask.shape
    _, (left, top), (new_w, new_h) = _view((height, width), side, resize)
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((new_w, new_h), Image.Resampling.NEAREST)
    view = np.asarray(resized)[int(top) : int(top) + side, int(left) : int(left) + side] > 127
    return torch.from_numpy(view.copy())


def _view(image_size: tuple[int, int], side: int, resize: str):
    """((x scale, y scale), (left, top) of the crop, (resized width, height)) of the processor's view."""
    height, width = image_size
    if resize == "squash":
        return (side / width, side / height), (0.0, 0.0), (side, side)
    # as ImageProcessor._square: the resized size truncated, then the centre crop
    nw, nh = (side, int(side * height / width)) if width <= height else (int(side * width / height), side)
    return (nw / width, nh / height), (float((nw - side) // 2), float((nh - side) // 2)), (nw, nh)


def region_visibility(
    region, image_size: tuple[int, int], side: int, resize: str, grid: tuple[int, int], coverage: float
) -> torch.Tensor | None:
    """(rows * cols,) bool: the patches of the square view that a manifest region (a box, or a mask:
    `region_manifest.Region`) sees; None when the view leaves the region out."""
    if region.mask is None:
        box, kept = view_boxes(torch.tensor([region.box]), image_size, side, resize)
        return box_visibility(box, (side, side), grid)[0] if bool(kept[0]) else None
    if tuple(region.mask.shape) != tuple(image_size):
        raise ValueError(f"the mask is {region.mask.shape[1]}x{region.mask.shape[0]}, the image "
                         f"{image_size[1]}x{image_size[0]}")  # fmt: skip
    view = view_mask(region.mask, side, resize)
    return mask_visibility(view[None], grid, coverage)[0] if bool(view.any()) else None


def mask_visibility(masks: torch.Tensor, grid: tuple[int, int], coverage: float = 0.5) -> torch.Tensor:
    """(N, H, W) bool masks -> (N, rows * cols) bool: the patches each covers at least `coverage`
    of, and at least the one it covers most."""
    share = F.adaptive_avg_pool2d(masks.float()[:, None], grid)[:, 0].flatten(1)  # (N, rows*cols)
    visible = share >= coverage
    visible[torch.arange(len(masks)), share.argmax(dim=1)] = True
    return visible


def sample_regions(count: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of `n` regions out of `count` (§3.2): a random `n` when there are more, else every
    region once and the rest drawn with replacement; (n,) long, order random."""
    if count < 1:
        raise ValueError("an image with no regions has nothing to sample")
    if count >= n:
        return torch.randperm(count, generator=generator)[:n]
    extra = torch.randint(count, (n - count,), generator=generator)
    picked = torch.cat([torch.arange(count), extra])
    return picked[torch.randperm(n, generator=generator)]


class RegionBlock(nn.Module):
    """One region layer: queries attend to the (fixed) tokens under a visibility mask, then an MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.norm_q, self.norm_kv, self.norm_mlp = (nn.LayerNorm(width, eps=eps) for _ in range(3))
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """queries (B, N, D), tokens (B, T, D), visible (B, N, T) bool -> queries (B, N, D)."""
        b, n, d = queries.shape
        split = lambda x: x.view(b, -1, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        kv = self.norm_kv(tokens)
        q, k, v = split(self.q(self.norm_q(queries))), split(self.k(kv)), split(self.v(kv))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None])  # 0 / -inf
        queries = queries + self.out(attended.transpose(1, 2).reshape(b, n, d))
        return queries + self.mlp(self.norm_mlp(queries))


class RegionLayers(nn.Module):
    """patch tokens (B, T, D) after the global layers (the CLS token left out: no region sees it),
    visibility (B, N, T) -> region embeddings (B, N, D)."""

    def __init__(self, config: RegionConfig, width: int, heads: int, eps: float = 1e-5):
        super().__init__()
        self.config = config
        self.query = nn.Parameter(torch.randn(width) / width**0.5)
        heads = config.heads or heads
        self.blocks = nn.ModuleList(
            RegionBlock(width, heads, config.mlp_ratio, eps) for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(width, eps=eps)

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        if not bool(visible.any(dim=2).all()):
            raise ValueError("a region sees no token (every region needs at least one visible patch)")
        queries = self.query.expand(visible.shape[0], visible.shape[1], -1)
        for block in self.blocks:
            queries = block(queries, tokens, visible)
        return self.norm(queries)
