"""`fovea pretrain regions`: RICE's region features and OCR labels, written as a FEATS folder.

RICE labels every object region with its nearest of K centres clustered from teacher features of
the regions, and every OCR region with the tokens of its text (§3.1, §3.3). This step makes both,
for the images of the inputs that a region manifest (`region_manifest`) lists:

* **object regions -> teacher features**, one row each, L2-normalised, by `pool`:
  ``crop`` (default): the teacher embeds the region's box cut from the image, as CLIP run on the
  region (the paper: "region features come from CLIP"); a mask region is cut by its box.
  ``roi``: the mean of the teacher's last-layer patch tokens that the region sees on the image's
  square view (the visibility rule of the region layers: box centres, or mask coverage), one
  tower call per image instead of per region.
* **OCR regions -> token ids** of the text under a named tokenizer, the first `ocr_labels`
  distinct ones in reading order (the paper: M = 10 positives; it names no tokenizer).

The folder is features.py's format with rows = object regions (ids ``IMAGE#K``, K the region's
place among the image's kept objects; ``IMAGE#ocrJ`` for OCR rows, which the region probe asks for), so `fovea pretrain cluster` and `assign` run on it as they
are. Each part's JSON adds ``objects`` (per row: image id and the manifest's region), ``ocr``
(image id, region, token ids) and ``images`` (the manifest's images found in the chunk). It is
torchrun-sharded and resumable as features are. A bad manifest line, an image that fails to load
and a region that cannot be used are each named and counted (``manifest.json``, the parts'
``skipped``), never silently dropped. The manifest is read whole, once per process.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import write_text_atomic
from ..errors import ConfigError, ImageError
from .data import Chunk, ImageRef
from .features import part_files, save_npy
from .region_manifest import MIN_EDGE, Region, RegionRecord, parse_object, parse_ocr, read_manifest
from .regions import region_visibility
from .teacher import Teacher

logger = logging.getLogger(__name__)

POOLS = ("crop", "roi")
ROWS = "object regions"


@dataclass
class RegionRows:
    """The rows of a region FEATS folder; `features.compute_features(..., rows=RegionRows(...))`."""

    manifest: Path
    pool: str = "crop"
    min_edge: float = MIN_EDGE
    tokenizer: str | None = None
    """A tokenizer directory or hub id for the OCR texts (None: OCR regions are not labelled)."""
    ocr_labels: int = 10
    coverage: float = 0.5
    ocr_rows: bool = False
    """OCR regions are feature rows too (after the object rows of each image; the region probe's
    word regions), besides their token ids."""
    records: dict[str, RegionRecord] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ConfigError(f"pool: one of {POOLS}, got {self.pool!r}")
        if self.ocr_labels < 1 or self.min_edge < 0:
            raise ConfigError(f"ocr_labels must be at least 1 and min_edge at least 0, got "
                              f"{self.ocr_labels} and {self.min_edge}")  # fmt: skip
        self.manifest = Path(self.manifest)
        if not self.manifest.is_file():
            raise ConfigError(f"{self.manifest}: no such region manifest")
        records, self.report = read_manifest(self.manifest, self.min_edge)
        self.records = {}
        for record in records:
            if record.image in self.records:
                self.report.bad.append(f"{self.manifest}: image {record.image}: listed twice (first kept)")
                continue
            self.records[record.image] = record
        self._tokenizer = _load_tokenizer(self.tokenizer) if self.tokenizer else None

    @property
    def vocab(self) -> int | None:
        return len(self._tokenizer) if self._tokenizer is not None else None

    def settings(self) -> dict:
        manifest = {"path": os.path.abspath(self.manifest), "bytes": self.manifest.stat().st_size}
        regions = {"manifest": manifest, "pool": self.pool, "min_edge": self.min_edge, "coverage": self.coverage,
                   "tokenizer": self.tokenizer, "ocr_labels": self.ocr_labels, "vocab": self.vocab}  # fmt: skip
        if self.ocr_rows:
            regions["ocr_rows"] = True
        return {"rows": ROWS, "regions": regions}

    # -- one part ----------------------------------------------------------------------------------

    def write_part(self, out: Path, c: int, chunk: Chunk, teacher: Teacher, batch_size: int, bar) -> None:
        refs = chunk.refs()
        listed = [ref for ref in refs if ref.id in self.records]
        bar.update(len(refs) - len(listed))
        part = _Part(teacher, self.pool, batch_size)
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="fovea-regions") as pool:
            for start in range(0, len(listed), batch_size):
                group = listed[start : start + batch_size]
                for ref, image in zip(group, pool.map(_load, group)):
                    self._add_image(part, ref, image)
                    bar.update(1)
        part.flush()
        array = np.concatenate(part.rows) if part.rows else np.zeros((0, teacher.dim), np.float16)
        npy, meta = part_files(out, c)
        save_npy(npy, array)
        info = {"chunk": c, "source": chunk.source, "refs": [r.as_dict() for r in part.refs],
                "objects": part.objects, "ocr": part.ocr, "images": [r.id for r in listed],
                "skipped": part.skipped}  # fmt: skip
        write_text_atomic(meta, json.dumps(info))  # last: its presence marks the part finished

    def _add_image(self, part: _Part, ref: ImageRef, image) -> None:
        if isinstance(image, str):
            part.skip(ref.id, image)
            return
        record = self.records[ref.id]
        for j, region in enumerate(record.ocr):
            tokens = self._tokens(region.text) if self._tokenizer is not None else None
            if tokens == []:
                part.skip(f"{ref.id}#ocr{j}", f"its text {region.text!r} gives no tokens")
            elif tokens is not None:
                part.ocr.append({"image": ref.id, "region": region.raw, "tokens": tokens})
        regions = []
        candidates = [(str(k), region) for k, region in enumerate(record.objects)]
        if self.ocr_rows:
            candidates += [(f"ocr{j}", region) for j, region in enumerate(record.ocr)]
        for k, region in candidates:
            why = _unusable(region, image.size)
            if why:
                part.skip(f"{ref.id}#{k}", why)
            else:
                regions.append((k, region))
        if regions:
            part.add(ref, image, regions, self.coverage)

    def _tokens(self, text: str) -> list[int]:
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(dict.fromkeys(int(i) for i in ids))[: self.ocr_labels]

    # -- the index -----------------------------------------------------------------------------------

    def finish(self, out: Path, index: dict) -> dict:
        """Add the region counts to features.json and write the manifest's report (process 0)."""
        found, ocr = set(), 0
        for part in index["parts"]:
            info = json.loads(part_files(out, part["name"])[1].read_text())
            found.update(info["images"])
            ocr += len(info["ocr"])
        missing = sorted(set(self.records) - found)
        report = {"manifest": str(self.manifest), "records": self.report.records, "kept_regions": self.report.kept,
                  "small_regions": self.report.small, "min_edge": self.min_edge, "bad_lines": self.report.bad,
                  "images_not_in_inputs": len(missing), "first_missing": missing[:20]}  # fmt: skip
        write_text_atomic(out / "manifest.json", json.dumps(report, indent=2))
        if self.report.bad:
            logger.warning("%s: %d bad line(s) left out, listed in %s/manifest.json (first: %s)",
                           self.manifest, len(self.report.bad), out, self.report.bad[0])  # fmt: skip
        if missing:
            logger.warning(
                "%d image(s) of the manifest are not in the inputs (first: %s)", len(missing), missing[0]
            )
        index["regions"] = {"objects": index["count"], "ocr": ocr, "vocab": self.vocab,
                            "small": self.report.small, "bad_lines": len(self.report.bad)}  # fmt: skip
        write_text_atomic(out / "features.json", json.dumps(index, indent=2))
        return index


class _Part:
    """One part's rows as they are made: regions wait in batches of `batch_size` tower inputs."""

    def __init__(self, teacher: Teacher, pool: str, batch_size: int):
        self.teacher, self.pool, self.batch_size = teacher, pool, batch_size
        self.rows: list[np.ndarray] = []
        self.refs: list[ImageRef] = []
        self.objects: list[dict] = []
        self.ocr: list[dict] = []
        self.skipped: list[list[str]] = []
        self._waiting: list[tuple] = []  # (pixels (1, 3, S, S), ref, [(k, region, visible or None)])

    def skip(self, what: str, why: str) -> None:
        logger.warning("skipped %s: %s", what, why)
        self.skipped.append([what, why])

    def add(self, ref: ImageRef, image, regions: list[tuple[str, Region]], coverage: float) -> None:
        processor = self.teacher.processor
        if self.pool == "crop":
            for k, region in regions:
                x0, y0, x1, y1 = (int(round(v)) for v in region.box)
                box = (max(x0, 0), max(y0, 0), min(x1, image.width), min(y1, image.height))
                self._waiting.append((processor([image.crop(box)]).pixels, ref, [(k, region, None)]))
        else:
            config = processor.config
            side, patch = config.size, _patch(self.teacher)
            grid = (side // patch, side // patch)
            seen = []
            for k, region in regions:
                visible = region_visibility(
                    region, (image.height, image.width), side, config.resize, grid, coverage
                )
                if visible is None:
                    self.skip(f"{ref.id}#{k}", "the square view the tower sees leaves this region out")
                else:
                    seen.append((k, region, visible))
            if seen:
                self._waiting.append((processor([image]).pixels, ref, seen))
        if len(self._waiting) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._waiting:
            return
        pixels = torch.cat([job[0] for job in self._waiting])
        if self.pool == "crop":
            vectors = list(self.teacher.embed(pixels))
        else:
            tokens, _ = self.teacher.patch_tokens(pixels)  # (B, T, D)
            vectors = []
            for row, (_, _, seen) in enumerate(self._waiting):
                visible = torch.stack([v for _, _, v in seen]).to(tokens.device)  # (n, T)
                pooled = (visible.float() @ tokens[row]) / visible.sum(1, keepdim=True)
                vectors.extend(F.normalize(pooled, dim=-1))
        for _, ref, regions in self._waiting:
            for k, region, _ in regions:
                self.refs.append(ImageRef(f"{ref.id}#{k}", ref.path, ref.offset, ref.size))
                kind = "ocr" if region.text is not None else "object"
                self.objects.append({"image": ref.id, "kind": kind, "region": region.raw})
        self.rows.append(torch.stack(vectors).to(torch.float16).cpu().numpy())
        self._waiting = []


def _load(ref: ImageRef):
    """The decoded image, or why not."""
    try:
        return ref.load()
    except ImageError as err:
        return str(err).removeprefix(f"{ref.id}: ")


def _unusable(region: Region, size: tuple[int, int]) -> str | None:
    width, height = size
    x0, y0, x1, y1 = region.box
    if region.mask is not None and region.mask.shape != (height, width):
        return f"its mask is {region.mask.shape[1]}x{region.mask.shape[0]}, the image {width}x{height}"
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return f"its box {list(region.box)} lies outside the {width}x{height} image"
    return None


def _patch(teacher: Teacher) -> int:
    model = teacher.model.vision_model if teacher.clip else teacher.model
    return int(model.config.patch_size)


def _load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ConfigError(f"tokenizer {name}: cannot be loaded ({str(err).splitlines()[0]})") from None


# -- reading back ----------------------------------------------------------------------------------


@dataclass
class RegionTable:
    """What training needs of a region folder, by image id."""

    objects: dict[str, list[tuple[int, Region]]]
    """image id -> (row of the folder, i.e. of its labels, region) for each object region."""
    ocr: dict[str, list[tuple[list[int], Region]]]
    """image id -> (token ids, region) for each OCR region."""
    rows: int
    vocab: int | None
    settings: dict


def load_regions(folder: str | Path) -> RegionTable:
    """A region folder written by `fovea pretrain regions`, indexed by image id."""
    settings, parts = _region_parts(Path(folder))
    objects: dict[str, list] = {}
    ocr: dict[str, list] = {}
    row = 0
    for info in parts:
        for item in info["objects"]:
            objects.setdefault(item["image"], []).append((row, parse_object(item["region"])))
            row += 1
        for item in info["ocr"]:
            ocr.setdefault(item["image"], []).append((item["tokens"], parse_ocr(item["region"])))
    return RegionTable(objects, ocr, row, settings["regions"].get("vocab"), settings["regions"])


def region_rows(folder: str | Path) -> list[dict]:
    """Every row of a region folder in order: {"image", "kind" (object or ocr), "region" (its JSON)}."""
    return [item for info in _region_parts(Path(folder))[1] for item in info["objects"]]


def _region_parts(folder: Path) -> tuple[dict, list[dict]]:
    """(run.json's settings, each part's JSON in order) of a finished region folder."""
    index_file = folder / "features.json"
    if not index_file.is_file():
        raise ConfigError(f"{folder}: not a finished region folder (no features.json); run or rerun "
                          "`fovea pretrain regions`")  # fmt: skip
    index = json.loads(index_file.read_text())
    settings = json.loads((folder / "run.json").read_text())
    if index.get("regions") is None or settings.get("rows") != ROWS:
        raise ConfigError(
            f"{folder}: holds image features, not regions (`fovea pretrain regions` writes those)"
        )
    return settings, [json.loads(part_files(folder, part["name"])[1].read_text()) for part in index["parts"]]


def replace_vectors(folder: str | Path, array: np.ndarray, *, teacher: str) -> None:
    """Put features computed elsewhere (one per row, in the folder's order) into a finished region
    folder, which keeps its rows, regions and OCR labels; the index names `teacher`. For a teacher
    fovea cannot run (`fovea demo rice`'s oracle), as `features.write_features` is for images."""
    folder = Path(folder)
    _region_parts(folder)  # a finished region folder, or a clear refusal
    index = json.loads((folder / "features.json").read_text())
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2 or len(array) != index["count"]:
        raise ConfigError(f"{folder}: {index['count']} rows, but the features given are {array.shape}")
    array = array / np.linalg.norm(array, axis=1, keepdims=True)
    start = 0
    for part in index["parts"]:
        save_npy(part_files(folder, part["name"])[0], array[start : start + part["count"]].astype(np.float16))
        start += part["count"]
    index |= {"dim": int(array.shape[1]), "tower": teacher, "embedding": "precomputed"}
    write_text_atomic(folder / "features.json", json.dumps(index, indent=2))
