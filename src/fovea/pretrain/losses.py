"""Cluster-discrimination losses: a registry of loss configs, each formula written once.

``cosine`` is (B, C): each embedding's cosine with every class centre it is scored against (all
of them, or PartialFC's sampled subset). Both follow the papers' formulas:

* `MLCDLoss` (MLCD, Eq. 5): the positive and negative terms are separate log-sum-exps,
  ``log(1 + Σ_{i∈P} exp(−s·(cos_i − m))) + log(1 + Σ_{j∈N} exp(s·cos_j))``, N every class outside
  P; s = 64 and m = 0.3 are the values the sister RICE paper states (reference §5);
* `MarginLoss` (UNICOM / insightface's combined margin): the target logit becomes
  ``cos(m1·θ + m2) − m3``, every logit is scaled by s, then softmax cross-entropy. m3 > 0 is
  CosFace, m2 > 0 ArcFace.

Each loss's `per_sample` is written once over two reductions it is handed: `lse`, a row-wise
log-sum-exp over the columns (with a 1 beside the terms when asked), and `across`, a sum of a
per-sample partial value. On a whole cosine matrix they are plain torch (`local_lse`, `no_sum`); PartialFC
hands sharded ones that all-reduce over processes, so the same formula runs on class shards.
``log(1 + Σ exp(x))`` is a log-sum-exp with a zero beside the terms: exact, stable, and finite in
gradient for a sample with no positive (its term is then 0). A loss config also carries PartialFC's
sampling rates, and adding a loss is one class here plus one `LOSSES.add` line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..registry import Registry

LSE = Callable[[torch.Tensor, bool], torch.Tensor]
"""(x (B, k) with -inf for absent terms, one) -> (B,) log(Σ exp(x)), or log(1 + Σ exp(x)) when one."""


def local_lse(x: torch.Tensor, one: bool) -> torch.Tensor:
    """`LSE` over the columns of one matrix."""
    if one:
        x = torch.cat([x.new_zeros(x.shape[0], 1), x], dim=1)
    return torch.logsumexp(x, dim=1)


def no_sum(x: torch.Tensor) -> torch.Tensor:
    """`across` on one matrix: the partial value is already the whole."""
    return x


@dataclass(kw_only=True)
class LossConfig:
    """What every loss has: its type, PartialFC's sampling, the scale s."""

    type: str
    sample_rate: float = 0.1
    """PartialFC: the fraction of classes scored per step (of the negatives or of all: `rate_of`)."""
    feature_rate: float | None = None
    """UNICOM's feature-dimension sampling: this fraction of the embedding's dimensions per step."""
    scale: float = 64.0

    multi_label: ClassVar[bool] = False
    """Labels are (B, L) positives (True) or one class per sample (False)."""
    rate_of: ClassVar[str] = "classes"
    """What `sample_rate` is a fraction of, as the loss's own paper samples: "negatives" or "classes"."""

    def __post_init__(self) -> None:
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate: must be in (0, 1], got {self.sample_rate}")
        if self.feature_rate is not None and not 0.0 < self.feature_rate <= 1.0:
            raise ValueError(f"feature_rate: must be in (0, 1] or null, got {self.feature_rate}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"scale: must be positive, got {self.scale}")

    @classmethod
    def variant(cls, data: dict) -> type[LossConfig]:
        """The registered config class that `data` (a mapping with ``type``) names."""
        return LOSSES.get(data.get("type", "mlcd"))

    def per_sample(self, cosine: torch.Tensor, labels: torch.Tensor, lse: LSE, across) -> torch.Tensor:
        """(B,) losses from `cosine` (B, k) and `labels` (B, L) column indices, -1 = none here."""
        raise NotImplementedError


@dataclass(kw_only=True)
class MLCDLoss(LossConfig):
    type: str = "mlcd"
    margin: float = 0.3
    """The margin m on the positives' cosines."""

    multi_label: ClassVar[bool] = True
    rate_of: ClassVar[str] = "negatives"  # MLCD: |Ω'_n| = r·|Ω_n|, every positive kept

    def per_sample(self, cosine, labels, lse, across):
        # masks and margins are applied in place to fresh products, and `cosine` is dropped once
        # scaled: the (B, k) tensors are the cost of a PartialFC step
        labels = _drop_repeats(labels)  # a class listed twice is one positive
        listed = labels >= 0
        rows = torch.arange(len(labels), device=labels.device)[:, None].expand_as(labels)
        positive = cosine[rows, labels.clamp(min=0)]  # (B, L); indexing, as gather would save `cosine`
        positive = (-self.scale * (positive - self.margin)).masked_fill(~listed, float("-inf"))
        is_positive = torch.zeros_like(cosine, dtype=torch.bool)  # (B, k)
        is_positive[rows[listed], labels[listed]] = True
        negative = (self.scale * cosine).masked_fill_(is_positive, float("-inf"))  # (B, k)
        del cosine
        return lse(positive, True) + lse(negative, True)


@dataclass(kw_only=True)
class MarginLoss(LossConfig):
    type: str = "margin"
    m1: float = 1.0
    m2: float = 0.0
    m3: float = 0.4
    """Target logit cos(m1·θ + m2) − m3 (m3 > 0 CosFace, m2 > 0 ArcFace)."""

    def per_sample(self, cosine, labels, lse, across):
        """`labels` (B, 1): the target's column where it is scored here (on one shard), else -1."""
        labels = labels[:, 0]
        rows = torch.nonzero(labels >= 0).squeeze(1)
        target = cosine[rows, labels[rows]]  # (n,) the targets scored here
        if self.m1 != 1.0 or self.m2 != 0.0:  # ArcFace: the angle moves; clamped so arccos' grad is finite
            target = torch.cos(self.m1 * torch.arccos(target.clamp(-1 + 1e-7, 1 - 1e-7)) + self.m2)
        target = self.scale * (target - self.m3)
        logits = (self.scale * cosine).index_put_((rows, labels[rows]), target)  # (B, k)
        del cosine
        target_logit = across(logits.new_zeros(len(logits)).index_put((rows,), target))  # (B,)
        return lse(logits, False) - target_logit


LOSSES: Registry[type[LossConfig]] = Registry("pretraining loss")
LOSSES.add("mlcd", MLCDLoss, "MLCD's separated multi-label loss (positives and negatives apart)")
LOSSES.add("margin", MarginLoss, "UNICOM's combined-margin softmax (one label; CosFace, ArcFace)")


def loss_config(value: str | dict | LossConfig) -> LossConfig:
    """A loss config from its type name, a mapping with ``type`` (strict keys) or a config."""
    from ..config import from_dict

    if isinstance(value, LossConfig):
        return value
    fields = {"type": value} if isinstance(value, str) else value
    if not isinstance(fields, dict):
        raise ConfigError(f"loss: expected a type name or a mapping with 'type', got {value!r}")
    return from_dict(LossConfig, fields, "loss")


def mlcd_loss(cosine: torch.Tensor, positives: torch.Tensor, *, scale: float = 64.0, margin: float = 0.3):
    """Batch mean of MLCD's loss on a whole cosine matrix. `positives` (B, L) int64 holds each
    sample's positive classes (column indices of `cosine`), -1 where a sample has fewer than L."""
    _check(cosine, positives, positives.dim() == 2, "(B, L)")
    return MLCDLoss(scale=scale, margin=margin).per_sample(cosine, positives, local_lse, no_sum).mean()


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
    if not keep.any():
        return cosine.sum() * 0.0
    config = MarginLoss(scale=scale, m1=m1, m2=m2, m3=m3)
    return config.per_sample(cosine[keep], labels[keep][:, None], local_lse, no_sum).mean()


def _drop_repeats(labels: torch.Tensor) -> torch.Tensor:
    """Sort each row and turn repeated ids into -1. (B, L) -> (B, L)."""
    labels = labels.sort(dim=1).values
    repeat = torch.zeros_like(labels, dtype=torch.bool)
    repeat[:, 1:] = labels[:, 1:] == labels[:, :-1]
    return labels.masked_fill(repeat, -1)


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
