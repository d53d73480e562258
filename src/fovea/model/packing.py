"""Packing visual tokens: AnyRes tiles -> one sequence per image, and merging it into the text.

``spatial_unpad`` (LLaVA-NeXT): the base view's tokens first, as they are; then the tiles'
feature maps stitched into one map, the rows/cols that only saw black padding removed, optionally
shrunk (``anyres_max_N``), a learned ``image_newline`` appended to every row, flattened row-major.
A single-view image is its tokens plus one newline. ``spatial`` stitches without unpadding or
newlines; ``flat`` just concatenates views.

Frames (a video, or each image of a sample with more images than ``image.frames_above``) are
packed as LLaVA-NeXT's ``prepare_inputs_labels_for_multimodal`` packs its "video" modality, after
the projector: each frame's token grid pooled (``get_2dPool``: bilinear to ceil(h/2) x ceil(w/2),
or 2x2 average or max pooling; stride 2 whatever ``mm_spatial_pool_stride`` says, as the original
calls it), then newlines by ``mm_newline_position``: ``grid`` after every pooled row of every frame,
``frame`` after every frame, ``one_token`` once after the last frame, ``no_token`` none.

``count_tokens`` mirrors ``pack_image`` with integers only, so the tokenizer knows the number of
placeholders before any model runs; a test checks the two agree on many sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..imaging import anyres
from ..imaging.processor import ImageLayout

MergeKind = Literal["spatial_unpad", "spatial", "flat"]
PoolKind = Literal["bilinear", "average", "max"]
NewlinePosition = Literal["grid", "frame", "one_token", "no_token"]


@dataclass(kw_only=True)
class FramesConfig:
    """How frames are pooled and separated (see the module docstring)."""

    pool: PoolKind = "bilinear"
    """``mm_spatial_pool_mode``; bilinear is LLaVA-NeXT's train default and transformers' only mode."""
    stride: int = 2
    """The pooling factor. LLaVA-NeXT applies 2 whatever its config's ``mm_spatial_pool_stride``."""
    newline: NewlinePosition | None = None
    """``mm_newline_position``; None: ``grid`` when the model has a learned newline, else ``no_token``."""

    def __post_init__(self) -> None:
        if self.pool not in ("bilinear", "average", "max"):
            raise ValueError(f"pool: expected bilinear, average or max, got {self.pool!r}")
        if self.stride < 1:
            raise ValueError(f"stride: expected a positive integer, got {self.stride}")
        if self.newline not in (None, "grid", "frame", "one_token", "no_token"):
            raise ValueError(f"newline: expected grid, frame, one_token or no_token, got {self.newline!r}")

    def position(self, learned_newline: bool) -> NewlinePosition:
        if self.newline is None:
            return "grid" if learned_newline else "no_token"
        return self.newline

    def pooled(self, side: tuple[int, int]) -> tuple[int, int]:
        """A frame's token grid after pooling."""
        if self.pool == "bilinear":
            return math.ceil(side[0] / self.stride), math.ceil(side[1] / self.stride)
        if min(side) < self.stride:
            raise ValueError(
                f"{self.pool} pooling by {self.stride} needs frames of at least {self.stride}x{self.stride} tokens, got {side[0]}x{side[1]}"
            )
        return side[0] // self.stride, side[1] // self.stride


def _frames_count(frames: int, side: tuple[int, int], config: FramesConfig, newline: bool) -> int:
    h, w = config.pooled(side)
    position = config.position(newline)
    per_frame = {"grid": h * (w + 1), "frame": h * w + 1}.get(position, h * w)
    return frames * per_frame + (1 if position == "one_token" and newline else 0)


def _pack_frames(
    views: torch.Tensor, side: tuple[int, int], config: FramesConfig, newline: torch.Tensor | None
) -> torch.Tensor:
    """(F, h*w, D) frame tokens -> pooled, with newlines: (n, D)."""
    frames, tokens, dim = views.shape
    if tokens != side[0] * side[1]:
        raise ValueError(
            f"pooling frames needs {side[0]}x{side[1]} grid tokens per frame, got {tokens} (a kept CLS?)"
        )
    fmap = views.view(frames, side[0], side[1], dim).permute(0, 3, 1, 2)  # (F, D, h, w)
    if config.pool == "bilinear":
        fmap = F.interpolate(fmap, size=list(config.pooled(side)), mode="bilinear")
    else:
        config.pooled(side)  # refuses a grid too small to pool
        pool = F.avg_pool2d if config.pool == "average" else F.max_pool2d
        fmap = pool(fmap, config.stride)
    position = config.position(newline is not None)
    if position in ("grid", "frame") and newline is None:
        raise ValueError(f"newlines by {position!r} need the model's learned image_newline")
    if position == "grid":
        column = newline.to(fmap.dtype)[None, :, None, None].expand(frames, dim, fmap.shape[2], 1)
        fmap = torch.cat([fmap, column], dim=3)  # (F, D, h', w'+1)
    packed = fmap.permute(0, 2, 3, 1).reshape(frames, -1, dim)  # (F, h'*w'(+h'), D), row-major per frame
    if position == "frame":
        packed = torch.cat([packed, newline.to(packed.dtype)[None, None].expand(frames, 1, dim)], dim=1)
    packed = packed.reshape(-1, dim)
    if position == "one_token" and newline is not None:
        packed = torch.cat([packed, newline.to(packed.dtype)[None]])
    return packed


def count_tokens(
    layout: ImageLayout,
    side: tuple[int, int],
    extra: int,
    merge: MergeKind,
    newline: bool,
    frames: FramesConfig | None = None,
) -> int:
    """Number of visual tokens `pack_image` produces for `layout` (side = tokens per view grid)."""
    if layout.frames:
        return _frames_count(layout.frames, side, frames or FramesConfig(), newline)
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
    frames: FramesConfig | None = None,
) -> torch.Tensor:
    """(num_views, T, D) visual tokens of one image (or of its frames) -> (n, D) packed sequence."""
    if layout.frames:
        return _pack_frames(views, side, frames or FramesConfig(), newline)
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
