"""Referring-segmentation scenes: `fovea demo seg`'s data, with exact masks.

Each image (64 px by default) holds two or three shapes of different colour-and-shape kinds on a
noisy grey background. Each record asks for one of them ("Segment the red circle.", with three
shapes "... left of the square.") and answers naming it before its mask token ("Sure, the red
circle: [SEG]."), with the shape's mask as COCO RLE in ``segmentation``: MLCD-Seg's record format.
The answer names the target so that the [SEG] state follows its description (LISA-style answers
do the same); the other shapes are distractors of other colour-and-shape kinds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..imaging.masks import rle_encode
from .synthetic import COLOURS, draw_shape

SHAPES = ("circle", "square", "triangle")
NAMES = tuple(COLOURS)


def make_seg_scenes(folder: Path, count: int, seed: int, size: int = 64) -> list[dict]:
    """Write `count` scenes (PNGs) and ``records.json`` (LLaVA records with ``segmentation``) under
    `folder`; returns the records."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(count):
        image, masks, kinds = _scene(size, rng)
        target = rng.randrange(len(kinds))
        name = f"{i:06d}.png"
        image.save(folder / name)
        records.append({
            "id": f"seg-{seed}-{i}",
            "image": name,
            "conversations": [
                {"from": "human", "value": f"<image>\nSegment the {_referring(kinds, target)}."},
                {"from": "gpt", "value": f"Sure, the {kinds[target][0]} {kinds[target][1]}: [SEG]."},
            ],
            "segmentation": [rle_encode(masks[target])],
        })  # fmt: skip
    (folder / "records.json").write_text(json.dumps(records))
    return records


def _scene(
    size: int, rng: random.Random
) -> tuple[Image.Image, list[np.ndarray], list[tuple[str, str, float]]]:
    noise = np.random.default_rng(rng.randrange(2**32)).integers(90, 130, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")
    slots = rng.sample(range(4), rng.choice((2, 3)))
    kinds = rng.sample([(c, s) for c in NAMES for s in SHAPES], len(slots))
    masks, described = [], []
    half = size // 2
    for slot, (colour, shape) in zip(slots, kinds):
        side = rng.randint(half * 5 // 8, half - 2)
        x0 = (slot % 2) * half + rng.randint(1, half - side - 1)
        y0 = (slot // 2) * half + rng.randint(1, half - side - 1)
        box = (x0, y0, x0 + side, y0 + side)
        draw_shape(ImageDraw.Draw(image), shape, box, COLOURS[colour])
        canvas = Image.new("1", (size, size))
        draw_shape(ImageDraw.Draw(canvas), shape, box, 1)
        masks.append(np.array(canvas, dtype=bool))
        described.append((colour, shape, x0 + side / 2))
    return image, masks, described


def _referring(kinds: list[tuple[str, str, float]], target: int) -> str:
    """The target's colour and shape; with three shapes, also where it is against another one."""
    colour, shape, x = kinds[target]
    others = [k for i, k in enumerate(kinds) if i != target]
    other = others[0]
    side = "left of" if x < other[2] else "right of"
    return f"{colour} {shape} {side} the {other[1]}" if len(kinds) > 2 else f"{colour} {shape}"
