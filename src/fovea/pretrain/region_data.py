"""What RICE training reads for each image: N regions, what each sees on the patch grid, its labels.

The regions of an image are its object regions (labelled by `fovea pretrain assign` on a REGIONS
folder: one centre each) and its OCR regions (labelled by their text's token ids), as
`region_features.load_regions` indexes them. Each is placed on the square view the image
processor makes (`regions.region_visibility`); one the view leaves out (a centre crop can) is
counted, not used. Of the rest, N are drawn as the paper draws them (`regions.sample_regions`),
from a generator seeded by (run seed, epoch, image), so a resumed run draws the same regions.
An image without a usable region gets N padding slots, which every loss leaves out.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..imaging.processor import ImageConfig
from .recipe import RegionSpec
from .region_features import load_regions
from .regions import region_visibility, sample_regions


class RegionData:
    """Per image id: a dict of (N, ...) tensors for the region layers and the two region losses."""

    def __init__(self, spec: RegionSpec, image: ImageConfig, grid: tuple[int, int], seed: int):
        table = load_regions(spec.features)
        self.objects, self.ocr = table.objects, table.ocr
        self.n, self.coverage, self.seed = spec.attention.regions, spec.attention.coverage, seed
        self.side, self.resize, self.grid = image.size, image.resize, grid
        self.object_classes, self.labels = _object_labels(spec, table.rows)
        self.vocab = table.vocab if spec.ocr and any(table.ocr.values()) else None
        self.width = int(table.settings["ocr_labels"])
        if self.object_classes is None and self.vocab is None:
            raise ConfigError(f"regions: {spec.features} gives no labelled region (no labels folder, and no "
                              "OCR token ids: `fovea pretrain regions --tokenizer` writes those)")  # fmt: skip

    def item(self, image_id: str, size: tuple[int, int], epoch: int, index: int) -> dict:
        """`size` (height, width) of the decoded image; (epoch, index) seed the draw."""
        candidates, outside = self._candidates(image_id, size)
        if not candidates:
            return {**self.empty(), "outside": outside}
        seed = ((self.seed * 1_000_003 + epoch) * 1_000_033 + index) % 2**63
        picked = sample_regions(len(candidates), self.n, torch.Generator().manual_seed(seed))
        chosen = [candidates[i] for i in picked.tolist()]
        ocr = torch.full((self.n, self.width), -1, dtype=torch.long)
        for row, (_, _, tokens) in enumerate(chosen):
            if tokens:
                ocr[row, : len(tokens)] = torch.tensor(tokens[: self.width])
        objects = torch.tensor([[label] for _, label, _ in chosen], dtype=torch.long)
        return {
            "visible": torch.stack([visible for visible, _, _ in chosen]),
            "object": objects,
            "object_valid": objects[:, 0] >= 0,
            "ocr": ocr,
            "ocr_valid": (ocr >= 0).any(1),
            "outside": outside,
        }

    def _candidates(self, image_id: str, size: tuple[int, int]) -> tuple[list, int]:
        """[(visible (T,), object label or -1, token ids or None)] and how many the view left out."""
        kept, outside = [], 0
        regions = []
        if self.object_classes is not None:
            regions += [
                (region, int(self.labels[row]), None) for row, region in self.objects.get(image_id, [])
            ]
        if self.vocab is not None:
            regions += [(region, -1, tokens) for tokens, region in self.ocr.get(image_id, [])]
        for region, label, tokens in regions:
            visible = region_visibility(region, size, self.side, self.resize, self.grid, self.coverage)
            if visible is None:
                outside += 1
            else:
                kept.append((visible, label, tokens))
        return kept, outside

    def empty(self) -> dict:
        """N padding slots: every patch visible (no region may be blind), no label."""
        tokens = self.grid[0] * self.grid[1]
        return {
            "visible": torch.ones(self.n, tokens, dtype=torch.bool),
            "object": torch.full((self.n, 1), -1, dtype=torch.long),
            "object_valid": torch.zeros(self.n, dtype=torch.bool),
            "ocr": torch.full((self.n, self.width), -1, dtype=torch.long),
            "ocr_valid": torch.zeros(self.n, dtype=torch.bool),
            "outside": 0,
        }


def stack_regions(items: list[dict | None], empty: dict) -> dict:
    """One batch's region tensors, (micro, N, ...); None (a skipped image) becomes padding."""
    rows = [item if item is not None else empty for item in items]
    batch = {key: torch.stack([row[key] for row in rows]) for key in empty if key != "outside"}
    batch["outside"] = sum(row["outside"] for row in rows)
    return batch


def _object_labels(spec: RegionSpec, rows: int) -> tuple[int | None, np.ndarray | None]:
    """(number of centres, (rows,) int64 labels), or (None, None) without a labels folder."""
    if spec.labels is None:
        return None, None
    folder = Path(spec.labels)
    labels_file = folder / "labels.npy"
    if not labels_file.is_file():
        raise ConfigError(f"regions.labels: {labels_file} does not exist (run `fovea pretrain assign` on "
                          f"{spec.features})")  # fmt: skip
    labels = np.load(labels_file, allow_pickle=False)
    if labels.ndim != 2 or len(labels) != rows:
        raise ConfigError(f"regions.labels: {labels_file} has shape {labels.shape}, expected ({rows}, 1) for "
                          f"the {rows} object regions of {spec.features}")  # fmt: skip
    info = folder / "assign.json"
    classes = json.loads(info.read_text()).get("centres") if info.is_file() else None
    return int(classes or labels.max() + 1), np.ascontiguousarray(labels[:, 0], dtype=np.int64)
