"""Scenes with objects and written words, and their region manifest: `fovea demo rice`'s data.

Each image is a 2 x 2 grid of cells on a noisy grey background. Two or three cells hold an object
(one of 12 kinds: 3 shapes x 4 colours), one or two a word (one of `WORDS`, in black), and the
rest are empty. Every region is written to ``regions.jsonl`` in the manifest format RICE's steps
read, in all three of its forms: squares as boxes, circles as COCO polygons, triangles as COCO
run-length masks; words as OCR regions (box + text). Each region also carries its ``label`` (the
kind, or the word), which the region probe reads. Because the generator knows every region, the
demo's teacher can be an oracle (`oracle_region_features`), as `fovea demo pretrain`'s is.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.synthetic import COLOURS, draw_shape
from ..imaging.masks import mask_runs, polygon_mask
from .scenes import KINDS

WORDS = ("cat", "dog", "sun", "map")
CELLS = 4


def make_region_scenes(folder: Path, count: int, seed: int, size: int = 64) -> list[dict]:
    """Write `count` scenes under `folder` (PNGs, scenes.json, regions.jsonl keyed by the ids
    `pretrain.data.scan` gives them); returns each scene's file, objects and words with boxes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    font = ImageFont.load_default(size=max(8, size * 7 // 32))
    scenes, lines = [], []
    for i in range(count):
        name = f"{i:06d}.png"
        image, scene = _scene(size, rng, font)
        image.save(folder / name)
        scenes.append({"file": name, **scene})
        lines.append(json.dumps(_manifest_line(f"{folder.name}/{name}", scene, size)))
    (folder / "scenes.json").write_text(json.dumps(scenes))
    (folder / "regions.jsonl").write_text("\n".join(lines) + "\n")
    return scenes


def _scene(size: int, rng: random.Random, font) -> tuple[Image.Image, dict]:
    noise = np.random.default_rng(rng.randrange(2**32)).integers(90, 130, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(image)
    cells = rng.sample(range(CELLS), CELLS)
    n_objects = rng.choice((2, 3)) if CELLS > 3 else 1
    n_words = min(rng.choice((1, 2)), CELLS - n_objects)
    half = size // 2
    objects, words = [], []
    for kind, cell in zip(rng.sample(range(len(KINDS)), n_objects), cells[:n_objects]):
        colour, shape = KINDS[kind].split()
        side = rng.randint(half * 5 // 8, half - 2)
        x0 = (cell % 2) * half + rng.randint(1, half - side - 1)
        y0 = (cell // 2) * half + rng.randint(1, half - side - 1)
        box = (x0, y0, x0 + side, y0 + side)
        draw_shape(draw, shape, box, COLOURS[colour])
        objects.append({"kind": kind, "shape": shape, "box": list(box)})
    for cell in cells[n_objects : n_objects + n_words]:
        word = rng.choice(WORDS)
        x, y = (cell % 2) * half + rng.randint(0, 3), (cell // 2) * half + rng.randint(2, half // 3)
        draw.text((x, y), word, fill=(10, 10, 10), font=font)
        words.append({"text": word, "box": list(draw.textbbox((x, y), word, font=font))})
    return image, {"objects": objects, "words": words}


def _manifest_line(image_id: str, scene: dict, size: int) -> dict:
    objects = []
    for item in scene["objects"]:
        label = KINDS[item["kind"]]
        if item["shape"] == "square":
            objects.append({"box": item["box"], "label": label})
        elif item["shape"] == "circle":
            objects.append({"polygon": [_circle(item["box"])], "size": [size, size], "label": label})
        else:
            mask = _triangle_mask(item["box"], size)
            runs = {"size": [size, size], "counts": mask_runs(mask)}  # the uncompressed form
            objects.append({"mask": runs, "label": label})
    ocr = [{"box": w["box"], "text": w["text"], "label": w["text"]} for w in scene["words"]]
    return {"image": image_id, "objects": objects, "ocr": ocr}


def _circle(box, points: int = 16) -> list[float]:
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    angles = (2 * math.pi * i / points for i in range(points))
    return [v for a in angles for v in (round(cx + r * math.cos(a), 1), round(cy + r * math.sin(a), 1))]


def _triangle_mask(box, size: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    return polygon_mask([[(x0 + x1) // 2, y0, x0, y1, x1, y1]], [size, size])


def kind_basis(dim: int = 32, seed: int = 0) -> np.ndarray:
    """A fixed random unit vector per object kind and per word: (kinds + words, dim)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((len(KINDS) + len(WORDS), dim)).astype(np.float32)
    return basis / np.linalg.norm(basis, axis=1, keepdims=True)


def oracle_region_features(
    labels: list[int], dim: int = 32, noise: float = 0.05, seed: int = 0
) -> np.ndarray:
    """The demo's teacher of regions, standing in for CLIP run on each region: its kind's vector
    plus a little noise, L2-normalised. `labels` index `KINDS`."""
    basis = kind_basis(dim, seed)
    rng = np.random.default_rng(seed + 1)
    feats = basis[labels] + noise * rng.standard_normal((len(labels), dim)).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def oracle_image_features(
    scenes: list[dict], dim: int = 32, noise: float = 0.05, seed: int = 0
) -> np.ndarray:
    """The demo's teacher of whole images: the sum of the vectors of every object and word in the
    scene, plus noise, L2-normalised (it knows what is there, not where)."""
    basis = kind_basis(dim, seed)
    rng = np.random.default_rng(seed + 2)
    rows = [[o["kind"] for o in s["objects"]] + [len(KINDS) + WORDS.index(w["text"]) for w in s["words"]]
            for s in scenes]  # fmt: skip
    feats = np.stack([basis[r].sum(0) for r in rows])
    feats += noise * rng.standard_normal(feats.shape).astype(np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)
