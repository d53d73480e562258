"""A segmentation training record: its masks, checked against its [SEG] tokens and its images.

MLCD-Seg's records are LLaVA's (``images``, ``conversations``) with ``segmentation``: one mask per
``[SEG]`` token, in text order, as COCO RLE (``{"size": [h, w], "counts": ...}``, compressed or
not) or COCO polygons (``[[x, y, ...], ...]`` or ``{"polygon": [...]}``, at the image's size).
Mask k belongs to image ``k mod images``: the model gives a sample's [SEG]s to its images round
robin, so each mask meets its prediction. A record whose masks do not fit (another count than its
[SEG] tokens after truncation, a size other than its image's, a malformed mask) is a `BadRecord`:
named, counted and skipped by the training loop, never trained on silently.
"""

from __future__ import annotations

import numpy as np
import torch

from ..imaging.masks import polygon_mask, rle_decode
from ..seg.head import sam_inputs
from .records import BadRecord


def seg_targets(raw: dict, rid: str, images: list, input_ids: list[int], token_id: int, processor) -> dict:
    """{"sam_images": SAM's view of each image, "masks": (H, W) bool tensors in [SEG] order}."""
    wanted = input_ids.count(token_id)
    given = raw.get("segmentation") or []
    if not isinstance(given, list):
        raise BadRecord(f"record {rid}: 'segmentation' must be a list of masks (COCO RLE or polygons)")
    if len(given) != wanted:
        raise BadRecord(f"record {rid}: {wanted} [SEG] tokens (after truncation) but {len(given)} masks")
    if wanted and not images:
        raise BadRecord(f"record {rid}: [SEG] tokens but no image to segment")
    masks = []
    for k, item in enumerate(given):
        image = images[k % len(images)]
        mask = _decode(item, (image.height, image.width), rid, k)
        if mask.shape != (image.height, image.width):
            raise BadRecord(f"record {rid}: mask {k} is {mask.shape[1]}x{mask.shape[0]}, its image "
                            f"{image.width}x{image.height}")  # fmt: skip
        masks.append(torch.from_numpy(np.ascontiguousarray(mask)))
    return {"sam_images": sam_inputs(processor, images) if images and wanted else [], "masks": masks}


def _decode(item, size: tuple[int, int], rid: str, k: int) -> np.ndarray:
    try:
        if isinstance(item, dict) and "counts" in item:
            return rle_decode(item)
        if isinstance(item, dict) and "polygon" in item:
            return polygon_mask(item["polygon"], item.get("size", list(size)))
        if isinstance(item, list):
            return polygon_mask(item, list(size))
    except (ValueError, TypeError, KeyError) as err:
        raise BadRecord(f"record {rid}: mask {k}: {err}") from None
    raise BadRecord(f"record {rid}: mask {k} is neither COCO RLE nor polygons")
