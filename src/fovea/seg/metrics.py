"""Referring-segmentation scores as MLCD-Seg's RefCOCO evaluation (LISA's) computes them.

A predicted mask is the logits above 0; the target is its mask above 0. Per mask: intersection I
and union U of the foreground; its IoU is ``I / (U + 1e-5)``, and 1.0 when both masks are empty
(U = 0: nothing to find, nothing found). Over a split:

* **cIoU** ``ΣI / (ΣU + 1e-10)`` over every mask: large objects weigh more;
* **gIoU** the mean over samples of each sample's mean mask IoU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def intersection_union(prediction: np.ndarray, target: np.ndarray) -> tuple[int, int]:
    """Two (H, W) masks (bool, or logits / values thresholded above 0) -> (I, U) in pixels."""
    prediction, target = np.asarray(prediction) > 0, np.asarray(target) > 0
    if prediction.shape != target.shape:
        raise ValueError(f"a {prediction.shape} prediction for a {target.shape} mask")
    return int((prediction & target).sum()), int((prediction | target).sum())


def mask_iou(intersection: int, union: int) -> float:
    return 1.0 if union == 0 else intersection / (union + 1e-5)


def refer_scores(samples: Iterable[Sequence[tuple[int, int]]]) -> dict[str, float]:
    """Each sample's (I, U) per mask -> {"ciou", "giou", "samples", "masks"} (fractions in [0, 1])."""
    total_i = total_u = masks = 0
    per_sample = []
    for pairs in samples:
        if not pairs:
            raise ValueError("a sample with no mask cannot be scored")
        per_sample.append(float(np.mean([mask_iou(i, u) for i, u in pairs])))
        total_i += sum(i for i, _ in pairs)
        total_u += sum(u for _, u in pairs)
        masks += len(pairs)
    if not per_sample:
        raise ValueError("no samples to score")
    return {"ciou": total_i / (total_u + 1e-10), "giou": float(np.mean(per_sample)), "samples": len(per_sample),
            "masks": masks}  # fmt: skip
