"""Synthetic image-QA data in LLaVA format: shapes, colours, counts, positions, words, bar charts.

Every record carries ``type`` (the question type) and ``answer`` (the exact expected answer),
so accuracy can be scored per type and compared with chance. Images are small (default 56 px)
and drawn with PIL; a seed fixes everything. Used by ``fovea demo`` and the bundled eval tasks.

Types and answer sets (chance = 1 / number of answers):

* ``colour``   "What colour is the shape?"         red, green, blue, yellow, purple
* ``shape``    "What shape is it?"                 circle, square, triangle
* ``count``    "How many shapes are there?"        1 .. 4
* ``position`` "Is the shape on the left or right?" left, right
* ``word``     "What word is written?"             cat, dog, sun, car
* ``chart``    "Which bar is tallest?"             A, B, C
* ``frames``   "In which frame is the red shape?"  1 .. 9 (nine frames, "Frame i: <image>" each, one
  shape per frame and one of them red: more than 8 images, so they run as pooled frames)
* ``pair``     "What colour is the left shape?"    red, green, blue, yellow, purple (two shapes)
* ``quadrant`` "What colour is the shape at the top left?"  red, green, blue, yellow, purple (four
  small shapes of four colours, one per quadrant; the question names the quadrant, so it decides
  which detail matters; neither is among the default kinds: for ``benchmarks/fuser_detail.py --task
  question``)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
WORDS = ("cat", "dog", "sun", "car")
BARS = ("A", "B", "C")

ANSWERS = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "count": ("1", "2", "3", "4"),
    "position": ("left", "right"),
    "word": WORDS,
    "chart": BARS,
    "frames": tuple(str(i) for i in range(1, 10)),
    "pair": tuple(COLOURS),
    "quadrant": tuple(COLOURS),
}
DEFAULT_KINDS = ("colour", "shape", "count", "position", "word", "chart", "frames")
"""What `generate` writes unless told otherwise (the demo's and the bundled tasks' data)."""
QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape is it?",
    "count": "How many shapes are there?",
    "position": "Is the shape on the left or right?",
    "word": "What word is written?",
    "chart": "Which bar is tallest?",
    "frames": "In which frame is the red shape?",
    "pair": "What colour is the {where} shape?",
    "quadrant": "What colour is the shape at the {where}?",
}


def chance(kind: str) -> float:
    return 1.0 / len(ANSWERS[kind])


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=fill)


def _background(size: int, rng: random.Random) -> Image.Image:
    grey = rng.randint(225, 250)
    return Image.new("RGB", (size, size), (grey, grey, grey))


def _one_shape(size: int, rng: random.Random, side: str | None = None) -> tuple[Image.Image, str, str, str]:
    image = _background(size, rng)
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    extent = rng.randint(size // 3, size // 2)
    side = side or rng.choice(("left", "right"))
    x0 = rng.randint(0, size // 2 - extent // 2) if side == "left" else rng.randint(size // 2, size - extent)
    y0 = rng.randint(0, size - extent)
    draw_shape(ImageDraw.Draw(image), shape, (x0, y0, x0 + extent, y0 + extent), COLOURS[colour])
    return image, colour, shape, side


QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
ASKED = {"pair": ("left", "right"), "quadrant": QUADRANTS}


def _asked(kind: str, size: int, rng: random.Random) -> tuple[Image.Image, str, str, str]:
    """(image, answer, caption, question): one shape of a different colour in each place `kind`
    names (two halves, or four quadrants), one place asked about."""
    places = ASKED[kind]
    image, half = _background(size, rng), size // 2
    draw = ImageDraw.Draw(image)
    colours = rng.sample(list(COLOURS), len(places))
    shape = half - 8 if kind == "pair" else half // 2
    for i, colour in enumerate(colours):
        column, row = (i % 2, i // 2) if kind == "quadrant" else (i, 0.5)
        x = int(column * half) + rng.randint(2, half - shape - 2)
        y = int(row * half) + (rng.randint(2, half - shape - 2) if kind == "quadrant" else -shape // 2)
        draw_shape(draw, rng.choice(SHAPES), (x, y, x + shape, y + shape), COLOURS[colour])
    asked = rng.randrange(len(places))
    caption = ", ".join(f"{c} at the {p}" for c, p in zip(colours, places))
    return image, colours[asked], caption, QUESTIONS[kind].format(where=places[asked])


def _make(kind: str, size: int, rng: random.Random) -> tuple[Image.Image, str, str]:
    """(image, answer, a caption for alignment) for one question type."""
    if kind in ("colour", "shape", "position"):
        image, colour, shape, side = _one_shape(size, rng)
        answer = {"colour": colour, "shape": shape, "position": side}[kind]
        return image, answer, f"a {colour} {shape} on the {side}"
    if kind == "count":
        n = rng.randint(1, 4)
        image, draw, cell = _background(size, rng), None, size // 2
        draw = ImageDraw.Draw(image)
        colour = rng.choice(list(COLOURS))
        for i in rng.sample(range(4), n):
            x, y = (i % 2) * cell, (i // 2) * cell
            draw_shape(draw, "circle", (x + 3, y + 3, x + cell - 3, y + cell - 3), COLOURS[colour])
        return image, str(n), f"{n} {colour} circles"
    if kind == "word":
        word = rng.choice(WORDS)
        image = _background(size, rng)
        font = ImageFont.load_default(size=max(10, size * 5 // 14))  # ~20 px at 56: legible to a tiny tower
        position = (rng.randint(0, size // 4), rng.randint(0, size // 2))
        ImageDraw.Draw(image).text(position, word, fill=(10, 10, 10), font=font)
        return image, word, f"the word {word}"
    heights = rng.sample(range(size // 6, size - 6), 3)
    image = _background(size, rng)
    draw = ImageDraw.Draw(image)
    width = size // 4
    for i, h in enumerate(heights):
        x = 4 + i * (width + 4)
        draw.rectangle((x, size - 2 - h, x + width, size - 2), fill=(60, 120, 200))
    tallest = BARS[heights.index(max(heights))]
    return image, tallest, f"a bar chart where bar {tallest} is tallest"


FRAMES = 9


def _frames(size: int, rng: random.Random) -> tuple[list[Image.Image], str, str]:
    """Nine frames of one shape each; the shape is red in exactly one (the answer, 1-based)."""
    red = rng.randrange(FRAMES)
    others = [c for c in COLOURS if c != "red"]
    frames = []
    for i in range(FRAMES):
        image = _background(size, rng)
        shape, colour = rng.choice(SHAPES), "red" if i == red else rng.choice(others)
        side = rng.randint(size // 3, size // 2)
        x, y = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
        draw_shape(ImageDraw.Draw(image), shape, (x, y, x + side, y + side), COLOURS[colour])
        frames.append(image)
    return frames, str(red + 1), f"nine frames; the red shape is in frame {red + 1}"


def _frames_record(out: Path, i: int, size: int, rng: random.Random) -> tuple[list[str], str, str, str]:
    """(image names, answer, caption, the question with its frame labels and tags)."""
    frames, answer, caption = _frames(size, rng)
    names = [f"images/{i:06d}-{j + 1}.png" for j in range(FRAMES)]
    for frame, name in zip(frames, names):
        frame.save(out / name)
    labels = "".join(f"Frame {j + 1}: <image>\n" for j in range(FRAMES))
    return names, answer, caption, labels + QUESTIONS["frames"]


def _drawn(kind: str, out: Path, i: int, size: int, rng: random.Random) -> tuple[dict, str, str, str, str]:
    """One record's images (saved; the record's image field), answer, caption, tagged question and
    tagged caption request."""
    if kind == "frames":
        names, answer, caption, question = _frames_record(out, i, size, rng)
        return (
            {"images": names},
            answer,
            caption,
            question,
            question.removesuffix(QUESTIONS[kind]) + "Describe the frames.",
        )
    if kind in ASKED:
        image, answer, caption, question = _asked(kind, size, rng)
    else:
        (image, answer, caption), question = _make(kind, size, rng), QUESTIONS[kind]
    name = f"images/{i:06d}.png"
    image.save(out / name)
    return {"image": name}, answer, caption, f"<image>\n{question}", "<image>\nDescribe the image."


def generate(
    out_dir: str | Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 56,
    kinds: tuple[str, ...] = DEFAULT_KINDS,
    progress: Callable[[int], None] | None = None,
) -> tuple[Path, Path]:
    """Write `n` QA records and `n` caption records with their images; returns (qa.json, captions.json)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    qa, captions = [], []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        images, answer, caption, question, describe = _drawn(kind, out, i, size, rng)
        qa.append(
            {
                "id": f"{kind}-{i}",
                "type": kind,
                "answer": answer,
                **images,
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
            }
        )
        captions.append(
            {
                "id": f"caption-{i}",
                **images,
                "conversations": [{"from": "human", "value": describe}, {"from": "gpt", "value": caption}],
            }
        )
        if progress:
            progress(i)
    (out / "qa.json").write_text(json.dumps(qa))
    (out / "captions.json").write_text(json.dumps(captions))
    return out / "qa.json", out / "captions.json"
