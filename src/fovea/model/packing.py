"""Packing visual tokens: AnyRes tiles -> one sequence per image, and merging it into the text.

``spatial_unpad`` (LLaVA-NeXT): the base view's tokens first, as they are; then the tiles'
feature maps stitched into one map, the rows/cols that only saw black padding removed, optionally
shrunk (``anyres_max_N``), a learned ``image_newline`` appended to every row, flattened row-major.
A single-view image is its tokens plus one newline. ``spatial`` stitches without unpadding or
newlines; ``flat`` just concatenates views.

``count_tokens`` mirrors ``pack_image`` with integers only, so the tokenizer knows the number of
placeholders before any model runs; a test checks the two agree on many sizes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..imaging import anyres
from ..imaging.processor import ImageLayout

MergeKind = Literal["spatial_unpad", "spatial", "flat"]


def count_tokens(
    layout: ImageLayout, side: tuple[int, int], extra: int, merge: MergeKind, newline: bool
) -> int:
    """Number of visual tokens `pack_image` produces for `layout` (side = tokens per view grid)."""
    per_view = side[0] * side[1] + extra
    if layout.grid is None:
        return per_view + (1 if newline and merge == "spatial_unpad" else 0)
    if merge == "flat":
        return per_view * layout.num_views
    rows, cols = layout.grid
    if merge == "spatial":
        return per_view + rows * cols * side[0] * side[1]
    h, w = anyres.unpadded_shape(layout.size, (rows * side[0], cols * side[1]))
    max_tiles = anyres.parse_max_tiles(layout.mode)
    if max_tiles is not None:
        h, w = anyres.max_tokens_shape((h, w), side[0], max_tiles)
    return per_view + h * (w + (1 if newline else 0))


def pack_image(
    views: torch.Tensor,
    layout: ImageLayout,
    side: tuple[int, int],
    merge: MergeKind,
    newline: torch.Tensor | None,
) -> torch.Tensor:
    """(num_views, T, D) visual tokens of one image -> (n, D) packed sequence."""
    if layout.grid is None:
        tokens = views[0]
        if newline is not None and merge == "spatial_unpad":
            tokens = torch.cat([tokens, newline[None].to(tokens.dtype)])
        return tokens
    if merge == "flat":
        return views.flatten(0, 1)
    base, tiles = views[0], views[1:]
    rows, cols = layout.grid
    gh, gw = side
    dim = tiles.shape[-1]
    if tiles.shape[1] != gh * gw:
        raise ValueError(
            f"spatial merge needs {gh}x{gw} grid tokens per tile, got {tiles.shape[1]} (a kept CLS?)"
        )
    grid = tiles.view(rows, cols, gh, gw, dim)
    if merge == "spatial":
        return torch.cat([base, grid.permute(0, 2, 1, 3, 4).reshape(-1, dim)])
    fmap = grid.permute(4, 0, 2, 1, 3).reshape(dim, rows * gh, cols * gw)  # (D, rows*gh, cols*gw)
    h, w = anyres.unpadded_shape(layout.size, (rows * gh, cols * gw))
    top, left = (rows * gh - h) // 2, (cols * gw - w) // 2
    fmap = fmap[:, top : top + h, left : left + w]
    max_tiles = anyres.parse_max_tiles(layout.mode)
    if max_tiles is not None:
        shrunk = anyres.max_tokens_shape((h, w), gh, max_tiles)
        if shrunk != (h, w):
            fmap = F.interpolate(fmap[None], list(shrunk), mode="bilinear")[0]
    if newline is not None:
        column = newline.to(fmap.dtype)[:, None, None].expand(dim, fmap.shape[1], 1)
        fmap = torch.cat([fmap, column], dim=2)  # (D, h, w) -> (D, h, w+1)
    return torch.cat([base, fmap.flatten(1).T])  # (D, h*(w+1)) -> (h*(w+1), D)


def merge_tokens(embeds: torch.Tensor, mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Write `features` (n, D) into `embeds` (B, T, D) where `mask` (B, T) is True, in order."""
    n_slots, n_feats = int(mask.sum()), features.shape[0]
    if n_slots != n_feats:
        raise ValueError(
            f"image placeholder tokens and image features disagree: {n_slots} placeholders in the text, "
            f"{n_feats} visual tokens from the images"
        )
    out = embeds.clone()
    out[mask] = features.to(out.dtype)
    return out
