"""AnyRes geometry, exactly as LLaVA-NeXT and transformers' LlavaNext compute it.

Pure integer arithmetic, no images and no torch, so that the image processor (which cuts tiles),
the tokenizer side (which must know how many placeholder tokens an image takes *before* the model
runs) and the packer (which unpads feature maps) all use one definition.

Conventions: every size and every pinpoint is ``(height, width)``. transformers documents its
``image_grid_pinpoints`` as (height, width) and reads them so; the original LLaVA-NeXT repository
reads the same lists as (width, height). The checkpoint importers convert; nothing here guesses.
Source: LLaVA-NeXT ``llava/mm_utils.py`` and transformers ``models/llava_next`` (behaviour only).
"""

from __future__ import annotations

import math
import re

from ..errors import ConfigError

Size = tuple[int, int]  # (height, width)

_RANGE = re.compile(r"\((\d+)x(\d+)\)")


def parse_pinpoints(spec: str | list, tile: int) -> list[Size]:
    """Grid pinpoints as a list of (height, width) pixel sizes.

    `spec` is either a list of ``[height, width]`` pairs, or LLaVA-NeXT's range string
    ``"(1x1),...,(6x6)"``: every grid from the first to the last, times the tile size. The range
    string is LLaVA-NeXT's own syntax and is read its way, ``(AxB)`` = A tiles wide, B tiles high,
    so a range gives the same resolutions as it does there.
    """
    if isinstance(spec, str):
        found = _RANGE.findall(spec)
        if len(found) < 1:
            raise ConfigError(f"grid_pinpoints {spec!r}: expected a list or a range like '(1x1),...,(3x3)'")
        (w0, h0), (w1, h1) = map(int, found[0]), map(int, found[-1])
        pairs = [(h * tile, w * tile) for w in range(w0, w1 + 1) for h in range(h0, h1 + 1)]
    else:
        pairs = []
        for item in spec:
            if not (
                isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, int) for v in item)
            ):
                raise ConfigError(f"grid_pinpoints: each entry must be [height, width], got {item!r}")
            pairs.append((int(item[0]), int(item[1])))
    if not pairs:
        raise ConfigError("grid_pinpoints is empty")
    for h, w in pairs:
        if h <= 0 or w <= 0 or h % tile or w % tile:
            raise ConfigError(f"grid_pinpoints: {h}x{w} is not a positive multiple of the tile size {tile}")
    return pairs


def select_best_resolution(size: Size, pinpoints: list[Size]) -> Size:
    """The pinpoint that keeps the most of the image's pixels, then wastes the fewest."""
    height, width = size
    best, best_effective, best_wasted = pinpoints[0], -1, math.inf
    for ph, pw in pinpoints:
        scale = min(pw / width, ph / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = ph * pw - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (ph, pw), effective, wasted
    return best


def fit_size(size: Size, target: Size) -> Size:
    """Aspect-kept size of `size` inside `target` (the longer relative side fills it, ceil, capped)."""
    height, width = size
    th, tw = target
    scale_w, scale_h = tw / width, th / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), th), tw
    return th, min(math.ceil(width * scale_h), tw)


def pad_offsets(inner: Size, outer: Size) -> Size:
    """(top, left) offsets that centre `inner` in `outer` (extra pixel goes bottom/right)."""
    return (outer[0] - inner[0]) // 2, (outer[1] - inner[1]) // 2


def tile_grid(size: Size, pinpoints: list[Size], tile: int) -> Size:
    """(rows, cols) of tiles an image of `size` is cut into."""
    best_h, best_w = select_best_resolution(size, pinpoints)
    return best_h // tile, best_w // tile


def unpadded_shape(size: Size, grid_hw: Size) -> Size:
    """Feature-map (rows, cols) left after removing the rows/cols that only saw black padding.

    `grid_hw` is the full feature map of all tiles (rows*side, cols*side). Mirrors the model-side
    ``unpad_image``, including transformers' ``round(..., 7)`` guard against float error.
    """
    height, width = size
    cur_h, cur_w = grid_hw
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        pad = (cur_h - new_h) // 2
        return cur_h - 2 * pad, cur_w
    new_w = int(round(width * (cur_h / height), 7))
    pad = (cur_w - new_w) // 2
    return cur_h, cur_w - 2 * pad


def max_tokens_shape(shape: Size, side: int, max_tiles: int) -> Size:
    """`anyres_max_N`: shrink an unpadded map whose area exceeds N tiles by more than 1.1x."""
    h, w = shape
    ratio = math.sqrt(h * w / (max_tiles * side * side))
    if ratio > 1.1:
        return int(h // ratio), int(w // ratio)
    return h, w


def parse_max_tiles(mode: str) -> int | None:
    """N of an ``anyres_max_N`` mode, or None for the other modes."""
    if mode.startswith("anyres_max_"):
        tail = mode.removeprefix("anyres_max_")
        if not tail.isdigit() or int(tail) < 1:
            raise ConfigError(f"image mode {mode!r}: expected anyres_max_N with N >= 1")
        return int(tail)
    return None
