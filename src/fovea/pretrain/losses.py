"""Cluster-discrimination losses over cosine similarities to class centres, as pure functions.

``cosine`` is (B, C): each embedding's cosine with every class centre it is scored against (all
of them, or PartialFC's sampled subset). Both follow the papers' formulas:

* `mlcd_loss` (MLCD, Eq. 5): the positive and negative terms are separate log-sum-exps,
  ``log(1 + Σ_{i∈P} exp(−s·(cos_i − m))) + log(1 + Σ_{j∈N} exp(s·cos_j))``, N every class outside
  P; s = 64 and m = 0.3 are the values the sister RICE paper states (reference §5);
* `margin_softmax_loss` (UNICOM / insightface's combined margin): the target logit becomes
  ``cos(m1·θ + m2) − m3``, every logit is scaled by s, then softmax cross-entropy. m3 > 0 is
  CosFace, m2 > 0 ArcFace.

``log(1 + Σ exp(x))`` is computed as a log-sum-exp with a zero beside the terms, which is exact,
stable, and keeps gradients finite for a sample with no positive (its term is then 0).
"""

from __future__ import annotations

import torch


def mlcd_loss(cosine: torch.Tensor, positives: torch.Tensor, *, scale: float = 64.0, margin: float = 0.3):
    """Batch mean of MLCD's loss. `positives` (B, L) int64 holds each sample's positive classes
    (column indices of `cosine`), -1 where a sample has fewer than L."""
    batch, classes = _check(cosine, positives, positives.dim() == 2, "(B, L)")
    valid = positives >= 0
    is_positive = torch.zeros(batch, classes, dtype=torch.bool, device=cosine.device)
    rows = torch.arange(batch, device=cosine.device)[:, None].expand_as(positives)
    is_positive[rows[valid], positives[valid]] = True
    positive = _log1p_sum_exp((-scale * (cosine - margin)).masked_fill(~is_positive, float("-inf")))
    negative = _log1p_sum_exp((scale * cosine).masked_fill(is_positive, float("-inf")))
    return (positive + negative).mean()


def margin_softmax_loss(
    cosine: torch.Tensor,
    labels: torch.Tensor,
    *,
    scale: float = 64.0,
    m1: float = 1.0,
    m2: float = 0.0,
    m3: float = 0.4,
):
    """Softmax cross-entropy with the combined margin on the target class; `labels` (B,) int64,
    -1 = no label here (left out of the mean, as PartialFC does for classes on other ranks)."""
    _check(cosine, labels, labels.dim() == 1, "(B,)")
    keep = labels >= 0
    cosine, labels = cosine[keep], labels[keep]
    if not len(labels):
        return cosine.sum() * 0.0
    target = cosine.gather(1, labels[:, None])  # (B, 1)
    if m1 != 1.0 or m2 != 0.0:  # ArcFace: the angle moves; clamped so arccos' gradient stays finite
        theta = torch.arccos(target.clamp(-1 + 1e-7, 1 - 1e-7))
        target = torch.cos(m1 * theta + m2)
    logits = cosine.scatter(1, labels[:, None], target - m3) * scale
    return torch.nn.functional.cross_entropy(logits, labels)


def _log1p_sum_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 + Σ_j exp(x_j)) per row; -inf entries are absent terms."""
    return torch.logsumexp(torch.cat([x.new_zeros(x.shape[0], 1), x], dim=1), dim=1)


def _check(cosine: torch.Tensor, labels: torch.Tensor, shaped: bool, shape: str) -> tuple[int, int]:
    if cosine.dim() != 2:
        raise ValueError(f"cosine must be (B, C), got shape {tuple(cosine.shape)}")
    if not shaped or labels.shape[0] != cosine.shape[0]:
        raise ValueError(
            f"labels must be {shape} with B = {cosine.shape[0]}, got shape {tuple(labels.shape)}"
        )
    if labels.dtype != torch.long:
        raise ValueError(f"labels must be int64 class indices, got {labels.dtype}")
    if labels.numel() and (labels.max() >= cosine.shape[1] or labels.min() < -1):
        raise ValueError(
            f"labels must lie in [0, {cosine.shape[1]}) or be -1, got {labels.min()}..{labels.max()}"
        )
    return cosine.shape
