"""The cluster-discrimination losses equal their papers' formulas, computed here independently with
plain Python floats; label assignment equals a brute-force sort."""

from __future__ import annotations

import math

import pytest
import torch

from fovea.pretrain.assign import top_centres
from fovea.pretrain.losses import margin_softmax_loss, mlcd_loss


def _mlcd_by_formula(cosine, positives, s, m) -> float:
    total = 0.0
    for row, labels in zip(cosine.tolist(), positives.tolist()):
        p = {c for c in labels if c >= 0}
        pos = sum(math.exp(-s * (row[i] - m)) for i in p)
        neg = sum(math.exp(s * row[j]) for j in range(len(row)) if j not in p)
        total += math.log(1 + pos) + math.log(1 + neg)
    return total / len(cosine)


def _margin_by_formula(cosine, labels, s, m1, m2, m3) -> float:
    losses = []
    for row, y in zip(cosine.tolist(), labels.tolist()):
        if y < 0:
            continue
        logits = [s * c for c in row]
        logits[y] = s * (math.cos(m1 * math.acos(row[y]) + m2) - m3)
        top = max(logits)
        losses.append(top + math.log(sum(math.exp(v - top) for v in logits)) - logits[y])
    return sum(losses) / len(losses)


@pytest.mark.parametrize("scale, margin", [(64.0, 0.3), (16.0, 0.0), (1.0, 0.5)])
def test_mlcd_loss_is_the_formula(scale, margin):
    torch.manual_seed(0)
    cosine = (torch.rand(6, 40, dtype=torch.float64) * 2 - 1) * 0.5  # s*cos stays within float64's exp
    positives = torch.randint(0, 40, (6, 8))
    positives[1, 3:] = -1  # fewer labels
    positives[4] = -1  # no label at all: only its negative term
    ours = mlcd_loss(cosine, positives, scale=scale, margin=margin)
    assert ours.item() == pytest.approx(
        _mlcd_by_formula(cosine, positives, scale, margin), rel=1e-5, abs=1e-5
    )


def test_mlcd_loss_gradients_are_finite_and_sampled_negatives_count_alone():
    cosine = (torch.rand(4, 30) * 2 - 1).requires_grad_()
    positives = torch.tensor([[0, 1], [2, -1], [-1, -1], [5, 6]])
    mlcd_loss(cosine, positives).backward()
    assert torch.isfinite(cosine.grad).all() and cosine.grad[2].abs().sum() > 0
    # with PartialFC the columns are the sampled classes: the loss sees exactly those
    half = cosine.detach()[:, :15]
    assert mlcd_loss(half, positives).item() == pytest.approx(
        _mlcd_by_formula(half, positives, 64.0, 0.3), rel=1e-4
    )


@pytest.mark.parametrize(
    "m1, m2, m3",
    [(1.0, 0.0, 0.4), (1.0, 0.5, 0.0), (1.0, 0.3, 0.2), (0.9, 0.4, 0.15)],
    ids=["cosface", "arcface", "combined", "sphereface-mix"],
)
def test_margin_softmax_loss_is_the_formula(m1, m2, m3):
    torch.manual_seed(1)
    cosine = torch.rand(7, 25, dtype=torch.float64) * 1.8 - 0.9
    labels = torch.randint(0, 25, (7,))
    labels[2] = -1  # a label on another rank: left out
    ours = margin_softmax_loss(cosine, labels, scale=64.0, m1=m1, m2=m2, m3=m3)
    assert ours.item() == pytest.approx(_margin_by_formula(cosine, labels, 64.0, m1, m2, m3), rel=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: mlcd_loss(torch.zeros(2, 5), torch.tensor([[5], [0]])), r"\[0, 5\)"),
        (lambda: mlcd_loss(torch.zeros(2, 5), torch.tensor([0, 1])), r"\(B, L\)"),
        (lambda: margin_softmax_loss(torch.zeros(2, 5), torch.tensor([0.0, 1.0])), "int64"),
    ],
)
def test_bad_labels_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_assignment_equals_a_brute_force_sort():
    torch.manual_seed(2)
    features, centres = torch.randn(1000, 16), torch.randn(50, 16)
    ids, sims = top_centres(features, centres, 8, chunk=97)
    cos = torch.nn.functional.normalize(features, dim=1) @ torch.nn.functional.normalize(centres, dim=1).T
    expected = cos.argsort(dim=1, descending=True)[:, :8]
    assert torch.equal(ids, expected) and ids.dtype == torch.int64
    assert torch.allclose(sims, cos.gather(1, expected), atol=1e-6)
    assert torch.equal(top_centres(features, centres, 1)[0][:, 0], cos.argmax(dim=1))  # UNICOM's one label
