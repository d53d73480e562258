"""MLCD-Seg's mask losses, as its ``compute_seg_loss`` (LISA's): 2.0 x sigmoid BCE + 0.5 x Dice.

For one sample with n predicted masks (logits) and n ground-truth masks (0/1), both at the image's
size:

* BCE: the mean over pixels of ``BCEWithLogits`` per mask, summed over masks, / (n + 1e-8);
* Dice: p = sigmoid(logit), with pixel values scaled by 1/1000 (the original's ``scale``):
  ``1 - (2·Σ(p·g)/1000 + 1e-6) / (Σp/1000 + Σg/1000 + 1e-6)`` per mask, summed, / (n + 1e-8).

Over a batch, each sample's loss is weighted by its number of masks and the sum divided by all the
masks: a per-mask mean. The LM's cross-entropy is added with weight 1 by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BCE_WEIGHT = 2.0
DICE_WEIGHT = 0.5
DICE_SCALE = 1000.0
DICE_EPS = 1e-6


def bce_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n, H, W) logits and 0/1 targets -> (n,) each mask's mean pixel BCE."""
    per_pixel = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return per_pixel.flatten(1).mean(1)


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n, H, W) logits and 0/1 targets -> (n,) each mask's Dice loss."""
    p, g = logits.float().sigmoid().flatten(1), targets.float().flatten(1)
    numerator = 2 * (p / DICE_SCALE * g).sum(1)  # the original scales p here, both below
    denominator = (p / DICE_SCALE).sum(1) + (g / DICE_SCALE).sum(1)
    return 1 - (numerator + DICE_EPS) / (denominator + DICE_EPS)


def sigmoid_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The sample's BCE: per-mask pixel means, summed, / (n + 1e-8)."""
    return bce_per_mask(logits, targets).sum() / (len(logits) + 1e-8)


def dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The sample's Dice loss, summed over masks / (n + 1e-8)."""
    return dice_per_mask(logits, targets).sum() / (len(logits) + 1e-8)


def mask_loss_sum(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σ over masks of 2.0·BCE + 0.5·Dice, Σ BCE, Σ Dice): what a training step divides by its
    masks, so the per-mask mean does not depend on how the step is cut into micro-batches."""
    bce, dices = bce_per_mask(logits, targets), dice_per_mask(logits, targets)
    return (BCE_WEIGHT * bce + DICE_WEIGHT * dices).sum(), bce.sum(), dices.sum()


def mask_loss(predictions: list[torch.Tensor], targets: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Per-mask mean over a batch of 2.0 x BCE + 0.5 x Dice; also each part, for logging."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} samples of predicted masks, {len(targets)} of targets")
    total = sum(len(p) for p in predictions)
    bce = sum(sigmoid_bce(p, t) * len(p) for p, t in zip(predictions, targets) if len(p)) / (total + 1e-8)
    dices = sum(dice(p, t) * len(p) for p, t in zip(predictions, targets) if len(p)) / (total + 1e-8)
    loss = BCE_WEIGHT * bce + DICE_WEIGHT * dices
    return loss, {"mask_bce": float(bce), "mask_dice": float(dices)}
