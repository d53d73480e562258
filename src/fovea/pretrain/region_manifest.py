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

from ..errors import FoveaError
from ..imaging.masks import polygon_mask, rle_decode

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
