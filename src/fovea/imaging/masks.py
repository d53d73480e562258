"""Binary masks in COCO's encodings: run-length (RLE, plain or compressed) and polygons.

What region manifests (RICE) and segmentation records (MLCD-Seg) hold. Runs are column-major,
background first, as COCO stores them; the compressed string is pycocotools' (5 bits a character,
a continuation bit, a sign bit on the last, each count after the second a difference from the one
two before). Polygons are filled as PIL fills them. Malformed input raises ValueError.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def rle_decode(rle: dict) -> np.ndarray:
    """COCO run-length encoding -> (H, W) bool: ``size`` [h, w] and ``counts``, a list of run
    lengths or COCO's compressed string; runs are column-major, background first."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = _string_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(runs) != height * width or min(runs, default=0) < 0:
        raise ValueError(f"the mask's runs cover {sum(runs)} pixels, not its {height}x{width}")
    values = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return values.reshape(width, height).T  # column-major, as COCO stores it


def mask_runs(mask: np.ndarray) -> list[int]:
    """(H, W) bool -> COCO's run lengths: column-major, background first (a leading 0 if the first
    pixel is set)."""
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat.astype(np.int8))) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def rle_encode(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO RLE with the compressed string counts `rle_decode` (and pycocotools) read."""
    runs = mask_runs(mask)
    chars = []
    for i, run in enumerate(runs):
        value = run - runs[i - 2] if i > 2 else run  # after the second, a difference from two before
        more = True
        while more:
            char = value & 0x1F
            value >>= 5
            more = value != -1 if char & 0x10 else value != 0
            chars.append(chr((char | 0x20 if more else char) + 48))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": "".join(chars)}


def _string_counts(text: str) -> list[int]:
    """COCO's compressed counts: 5 bits a character (offset 48), a continuation bit (0x20), a sign
    bit on the last character, and each count after the second stored as a difference from the
    one two before it."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            char = ord(text[position]) - 48
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            position, shift = position + 1, shift + 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def polygon_mask(polygons: list, size: list) -> np.ndarray:
    """COCO polygons ``[[x, y, x, y, ...], ...]`` -> (H, W) bool, filled as PIL fills them."""
    height, width = (int(v) for v in size)
    canvas = Image.new("1", (width, height))
    draw = ImageDraw.Draw(canvas)
    for points in polygons:
        if len(points) < 6 or len(points) % 2:
            raise ValueError("a polygon is at least three x, y pairs")
        draw.polygon([(float(points[i]), float(points[i + 1])) for i in range(0, len(points), 2)], fill=1)
    return np.array(canvas, dtype=bool)
