"""Multi-object scenes for `fovea demo pretrain`: small images whose content is known exactly.

Each image is a 2 x 2 grid of cells on a noisy grey background; 2 or 3 cells hold an object, one
of 12 kinds (3 shapes x 4 colours), no kind twice. Because the generator knows every object, the
demo can (a) give the teacher a stand-in for CLIP that sees the objects, and (b) probe a trained
encoder on per-object attributes: which kinds of object the scene holds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..data.synthetic import COLOURS, SHAPES, draw_shape

KIND_COLOURS = ("red", "green", "blue", "yellow")
KINDS = tuple(f"{colour} {shape}" for shape in SHAPES for colour in KIND_COLOURS)
CELLS = 4
EMPTY = len(KINDS)
"""An empty cell."""


def make_scenes(folder: Path, count: int, seed: int, size: int = 32) -> list[dict]:
    """Write `count` scenes as PNGs under `folder`; returns (and saves as scenes.json) for each
    image its file name and the kind in each cell (EMPTY where there is none)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    scenes = []
    for i in range(count):
        cells = [EMPTY] * CELLS
        kinds = rng.sample(range(len(KINDS)), rng.choice((2, 3)))
        for cell, kind in zip(rng.sample(range(CELLS), len(kinds)), kinds):
            cells[cell] = kind
        name = f"{i:06d}.png"
        _draw(cells, size, rng).save(folder / name)
        scenes.append({"file": name, "cells": cells})
    (folder / "scenes.json").write_text(json.dumps(scenes))
    return scenes


def _draw(cells: list[int], size: int, rng: random.Random) -> Image.Image:
    noise = np.random.default_rng(rng.randrange(2**32)).integers(90, 130, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(image)
    half = size // 2
    for cell, kind in enumerate(cells):
        if kind == EMPTY:
            continue
        colour, shape = KINDS[kind].split()
        x, y = (cell % 2) * half, (cell // 2) * half
        side = rng.randint(half * 5 // 8, half - 2)
        x0, y0 = x + rng.randint(1, half - side - 1), y + rng.randint(1, half - side - 1)
        draw_shape(draw, shape, (x0, y0, x0 + side, y0 + side), COLOURS[colour])
    return image


def oracle_features(scenes: list[dict], dim: int = 32, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """The demo's teacher, standing in for CLIP (which needs a download): a fixed random unit
    vector per object kind, summed over the objects a scene holds, plus a little noise,
    L2-normalised. It sees *which* objects are present, not where: like a caption embedding."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((len(KINDS), dim)).astype(np.float32)
    basis /= np.linalg.norm(basis, axis=1, keepdims=True)
    feats = np.stack([basis[[k for k in s["cells"] if k != EMPTY]].sum(0) for s in scenes])
    feats += noise * rng.standard_normal(feats.shape).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def kind_targets(scenes: list[dict]) -> np.ndarray:
    """(N, kinds) int64: 1 where the scene holds an object of that kind."""
    targets = np.zeros((len(scenes), len(KINDS)), dtype=np.int64)
    for row, scene in enumerate(scenes):
        targets[row, [k for k in scene["cells"] if k != EMPTY]] = 1
    return targets
