"""RICE's region data: a manifest of each image's object and OCR regions, beside its image source.

A manifest is JSON Lines, one image per line, keyed by the image's id in the source fovea reads
(a folder's relative path, a file list's entry, a shard's key: `pretrain.data.scan`'s ids)::

    {"image": "photos/a.jpg",
     "objects": [{"box": [x0, y0, x1, y1]},
                 {"mask": {"size": [h, w], "counts": "<COCO RLE>"}},
                 {"polygon": [[x, y, x, y, ...], ...], "size": [h, w]}],
     "ocr": [{"box": [x0, y0, x1, y1], "text": "EXIT"}]}

Boxes are pixels of the image (x right, y down). Masks are COCO's run-length encoding, compressed
string or plain list (column-major runs, background first), or COCO polygons; a mask's box is its
extent. RICE keeps regions whose shorter edge is at least 128 px (§3.1): smaller ones are dropped
and counted (`min_edge`). A bad line is named by ``FILE:LINE`` and its image, counted, and never
silently skipped; a region that is malformed makes its whole line bad.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import FoveaError

MIN_EDGE = 128
"""RICE's smallest region edge in pixels (§3.1: boxes with a minimum edge of at least 128)."""


class RegionError(FoveaError):
    """A manifest line that cannot be read (names the file, line and image)."""


@dataclass
class Region:
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None
    """(H, W) bool over the whole image, when the region was given as a mask."""
    text: str | None = None
    """The words of an OCR region."""
    raw: dict | None = None
    """The manifest's own JSON of the region: what later steps store and read back (`parse_object`)."""

    @property
    def min_edge(self) -> float:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


@dataclass
class RegionRecord:
    image: str
    objects: list[Region] = field(default_factory=list)
    ocr: list[Region] = field(default_factory=list)


@dataclass
class ManifestReport:
    records: int = 0
    kept: int = 0
    small: int = 0
    """Regions dropped for an edge under `min_edge`."""
    bad: list[str] = field(default_factory=list)
    """One line per bad manifest line: ``FILE:LINE: image ID: why``."""


def read_manifest(path: Path, min_edge: float = MIN_EDGE) -> tuple[list[RegionRecord], ManifestReport]:
    """Every readable line of the manifest as a record (its small regions dropped), and a report."""
    records, report = [], ManifestReport()
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = parse_line(line)
            except RegionError as err:
                report.bad.append(f"{path}:{number}: {err}")
                continue
            report.records += 1
            for kind in ("objects", "ocr"):
                regions = getattr(record, kind)
                kept = [r for r in regions if r.min_edge >= min_edge]
                report.small += len(regions) - len(kept)
                report.kept += len(kept)
                setattr(record, kind, kept)
            records.append(record)
    return records, report


def parse_line(line: str) -> RegionRecord:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as err:
        raise RegionError(f"not JSON ({err.msg})") from None
    image = raw.get("image") if isinstance(raw, dict) else None
    if not isinstance(image, str) or not image:
        raise RegionError("no 'image' id")
    try:
        objects = [parse_object(item) for item in _list(raw, "objects")]
        ocr = [parse_ocr(item) for item in _list(raw, "ocr")]
    except (RegionError, ValueError, TypeError, KeyError) as err:
        raise RegionError(f"image {image}: {err}") from None
    return RegionRecord(image, objects, ocr)


def _list(raw: dict, key: str) -> list:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise RegionError(f"'{key}' must be a list")
    return value


def parse_object(item: dict) -> Region:
    """One object region (box, COCO RLE mask or polygon) from its JSON; RegionError when malformed."""
    if not isinstance(item, dict):
        raise RegionError(f"a region is a JSON object, got {item!r}")
    if "box" in item:
        return Region(_box(item["box"]), raw=item)
    if "mask" in item:
        mask = rle_decode(item["mask"])
    elif "polygon" in item:
        if "size" not in item:
            raise RegionError("a polygon needs the image size: {'polygon': [...], 'size': [h, w]}")
        mask = polygon_mask(item["polygon"], item["size"])
    else:
        raise RegionError("an object needs 'box', 'mask' or 'polygon'")
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise RegionError("an empty mask")
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    return Region(box, mask, raw=item)


def parse_ocr(item: dict) -> Region:
    """One OCR region (box and text) from its JSON; RegionError when malformed."""
    if not isinstance(item, dict):
        raise RegionError(f"a region is a JSON object, got {item!r}")
    text = item.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RegionError("an OCR region needs its 'text'")
    return Region(_box(item.get("box")), text=text, raw=item)


def _box(value) -> tuple[float, float, float, float]:
    if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)):
        raise RegionError(f"a box is [x0, y0, x1, y1] in pixels, got {value!r}")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not (x1 > x0 and y1 > y0):
        raise RegionError(f"a box needs x1 > x0 and y1 > y0, got {value!r}")
    return x0, y0, x1, y1


def rle_decode(rle: dict) -> np.ndarray:
    """COCO run-length encoding -> (H, W) bool: ``size`` [h, w] and ``counts``, a list of run
    lengths or COCO's compressed string; runs are column-major, background first."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    runs = _string_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(runs) != height * width or min(runs, default=0) < 0:
        raise RegionError(f"the mask's runs cover {sum(runs)} pixels, not its {height}x{width}")
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
            raise RegionError("a polygon is at least three x, y pairs")
        draw.polygon([(float(points[i]), float(points[i + 1])) for i in range(0, len(points), 2)], fill=1)
    return np.array(canvas, dtype=bool)
