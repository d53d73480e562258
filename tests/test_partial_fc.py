"""PartialFC equals the plain losses on the full cosine matrix, samples as documented, and two gloo
processes under a DDP backbone equal one process with the whole batch (loss, gradients, a step)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import partial_fc_dist as dist_case
from fovea.pretrain.losses import LOSSES, MarginLoss, MLCDLoss, margin_softmax_loss, mlcd_loss
from fovea.pretrain.partial_fc import PartialFC, ShardInfo

PLAIN = {"mlcd": mlcd_loss, "margin": margin_softmax_loss}
"""Each registered loss's plain formula on a whole cosine matrix (a new loss needs its entry here)."""

MARGINS = {"cosface": {"m2": 0.0, "m3": 0.4}, "arcface": {"m2": 0.5, "m3": 0.0}}


def _inputs(batch=6, dim=16, classes=40, labels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    positives = torch.randint(0, classes, (batch, labels), generator=g)
    positives[1, 2:] = -1  # fewer labels
    positives[3] = -1  # none: only its negative term
    positives[4, 1] = positives[4, 0]  # a repeated label counts once
    return embeddings.requires_grad_(), positives


def _reference(embeddings, weight, loss_fn, dims=None, columns=None):
    """Loss and gradients of `loss_fn` on the plain cosine matrix (optionally some dims/columns)."""
    e = embeddings.detach().clone().requires_grad_()
    w = weight.detach().clone().requires_grad_()
    ew, ww = (e, w) if dims is None else (e[:, dims], w[:, dims])
    cosine = F.normalize(ew) @ F.normalize(ww).T  # (B, C)
    loss = loss_fn(cosine if columns is None else cosine[:, columns])
    loss.backward()
    return loss.detach(), e.grad, w.grad


def _ours(pfc, embeddings, labels, step=0):
    embeddings.grad = None
    loss = pfc(embeddings, labels, step)
    loss.backward()
    return loss.detach(), embeddings.grad, pfc.weight.grad


def _close(ours, reference):
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale, margin", [(64.0, 0.3), (8.0, 0.1)])
def test_one_process_full_rate_is_mlcd_loss(scale, margin):
    embeddings, positives = _inputs()
    pfc = PartialFC(16, 40, MLCDLoss(sample_rate=1.0, scale=scale, margin=margin)).double()
    reference = _reference(
        embeddings, pfc.weight, lambda c: mlcd_loss(c, positives, scale=scale, margin=margin)
    )
    _close(_ours(pfc, embeddings, positives), reference)


@pytest.mark.parametrize("form", MARGINS)
@pytest.mark.parametrize("label_shape", ["(b,)", "(b, 1)"])
def test_one_process_full_rate_is_margin_softmax_loss(form, label_shape):
    embeddings, positives = _inputs()
    labels = positives[:, 0].clone()  # sample 3 has no label: left out, as in margin_softmax_loss
    pfc = PartialFC(16, 40, MarginLoss(sample_rate=1.0, **MARGINS[form])).double()
    reference = _reference(embeddings, pfc.weight, lambda c: margin_softmax_loss(c, labels, **MARGINS[form]))
    given = labels if label_shape == "(b,)" else labels[:, None]
    _close(_ours(pfc, embeddings, given), reference)


@pytest.mark.parametrize("loss", LOSSES.names())
def test_padding_rows_are_left_out(loss):
    embeddings, positives = _inputs()
    labels = positives if LOSSES.get(loss).multi_label else positives[:, 0].clone()
    valid = torch.tensor([True, True, False, True, True, False])
    pfc = PartialFC(16, 40, {"type": loss, "sample_rate": 1.0}).double()
    plain = PLAIN[loss]
    reference = _reference(embeddings[valid], pfc.weight, lambda c: plain(c, labels[valid]))
    embeddings.grad = None
    ours = pfc(embeddings, labels, 0, valid=valid)
    ours.backward()
    _close((ours, embeddings.grad[valid], pfc.weight.grad), reference)
    assert (embeddings.grad[~valid] == 0).all()


@pytest.mark.parametrize("rate_of", ["classes", "negatives"])
def test_sampling_keeps_positives_and_is_a_function_of_seed_step_rank(rate_of):
    _, positives = _inputs(classes=1000)
    pfc = PartialFC(16, 1000, MLCDLoss(sample_rate=0.1), rate_of=rate_of, seed=3)
    index, renumbered = pfc.sample_classes(positives, step=7)
    distinct = len(set(positives[positives >= 0].tolist()))
    # PartialFC: 10% of all classes; MLCD: every positive and 10% of the rest
    assert len(index) == (100 if rate_of == "classes" else distinct + int(0.1 * (1000 - distinct)))
    assert torch.equal(index, index.sort().values) and len(set(index.tolist())) == len(index)
    assert set(positives[positives >= 0].tolist()) <= set(index.tolist())
    valid = positives >= 0
    assert torch.equal(index[renumbered[valid]], positives[valid]) and (renumbered[~valid] == -1).all()
    same = PartialFC(16, 1000, MLCDLoss(sample_rate=0.1), rate_of=rate_of, seed=3)
    assert torch.equal(same.sample_classes(positives, 7)[0], index)  # a resumed run draws the same
    assert not torch.equal(pfc.sample_classes(positives, 8)[0], index)
    other = PartialFC(16, 1000, MLCDLoss(sample_rate=0.1), rate_of=rate_of, seed=4)
    assert not torch.equal(other.sample_classes(positives, 7)[0], index)


def test_more_positives_than_the_rate_keeps_all_positives():
    many = torch.arange(60).reshape(6, 10)
    assert torch.equal(PartialFC(16, 200, rate_of="classes").sample_classes(many, 0)[0], torch.arange(60))
    assert len(PartialFC(16, 200).sample_classes(many, 0)[0]) == 60 + 14  # mlcd: + 10% of 140
    assert PartialFC(16, 200).rate_of == "negatives" and PartialFC(16, 200, "margin").rate_of == "classes"


def test_loss_on_the_sample_is_mlcd_loss_on_those_columns():
    embeddings, positives = _inputs(classes=200)
    pfc = PartialFC(16, 200, MLCDLoss(sample_rate=0.2)).double()
    index, renumbered = pfc.sample_classes(positives, step=2)
    reference = _reference(embeddings, pfc.weight, lambda c: mlcd_loss(c, renumbered), columns=index)
    loss, e_grad, w_grad = _ours(pfc, embeddings, positives, step=2)
    _close((loss, e_grad, w_grad[index]), (reference[0], reference[1], reference[2][index]))
    unsampled = torch.ones(200, dtype=torch.bool)
    unsampled[index] = False
    assert (w_grad[unsampled] == 0).all()


@pytest.mark.parametrize("loss", LOSSES.names())
def test_feature_rate_scores_on_one_subset_of_dimensions(loss):
    embeddings, positives = _inputs()
    labels = positives if LOSSES.get(loss).multi_label else positives[:, 0].clone()
    pfc = PartialFC(16, 40, {"type": loss, "sample_rate": 1.0, "feature_rate": 0.25}).double()
    dims = pfc.feature_dims(step=4)
    assert len(dims) == 4 and torch.equal(dims, pfc.feature_dims(step=4))
    assert not torch.equal(dims, pfc.feature_dims(step=5))
    plain = PLAIN[loss]
    reference = _reference(embeddings, pfc.weight, lambda c: plain(c, labels), dims=dims)
    _close(_ours(pfc, embeddings, labels, step=4), reference)


def test_shard_info_and_state_dict_guard():
    pfc = PartialFC(8, 11)
    assert pfc.shard_info() == ShardInfo(num_classes=11, world_size=1, rank=0, class_start=0, num_local=11)
    PartialFC(8, 11, seed=5).load_state_dict(pfc.state_dict())  # same shard: loads
    with pytest.raises(ValueError, match="world size"):
        PartialFC(8, 12).load_state_dict(pfc.state_dict())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: PartialFC(8, 11, {"type": "mlcd", "sample_rate": 0.0}), "sample_rate"),
        (lambda: PartialFC(8, 11, {"type": "mlcd", "sample_rate": 1.5}), "sample_rate"),
        (lambda: PartialFC(8, 11, {"type": "mlcd", "feature_rate": 0.0}), "feature_rate"),
        (lambda: PartialFC(8, 11, "arc"), "loss"),
        (lambda: PartialFC(8, 11, rate_of="all"), "rate_of"),
    ],
)
def test_bad_settings_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "loss, embeddings, labels, step, message",
    [
        ("mlcd", (4, 8), torch.tensor([[0], [1], [11], [2]]), 0, r"labels must lie in \[0, 11\)"),
        ("mlcd", (4, 8), torch.tensor([[0], [1], [-2], [2]]), 0, r"labels must lie in \[0, 11\)"),
        ("mlcd", (4, 8), torch.tensor([0, 1, 2, 3]), 0, r"labels must be \(b, L\)"),
        ("mlcd", (4, 8), torch.zeros(3, 2, dtype=torch.long), 0, "labels must be .* b = 4"),
        ("mlcd", (4, 8), torch.zeros(4, 2), 0, "labels must be int64"),
        ("margin", (4, 8), torch.zeros(4, 2, dtype=torch.long), 0, r"labels must be \(b,\) or \(b, 1\)"),
        ("mlcd", (4, 7), torch.zeros(4, 2, dtype=torch.long), 0, r"embeddings must be float \(b, 8\)"),
        ("mlcd", (4, 8), torch.zeros(4, 2, dtype=torch.long), -1, "step"),
        ("mlcd", (4, 8), torch.zeros(4, 2, dtype=torch.long), 0, r"valid must be a \(b,\) = \(4,\) bool"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(loss, embeddings, labels, step, message):
    valid = torch.ones(3, dtype=torch.bool) if message.startswith("valid") else None
    with pytest.raises(ValueError, match=message) as error:
        PartialFC(8, 11, loss)(torch.randn(*embeddings), labels, step, valid=valid)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("pfc_dist")
    script = Path(__file__).with_name("partial_fc_dist.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(dist_case.WORLD)]


def _one_process(case: str) -> dict[str, torch.Tensor]:
    """The same step in this process with the whole batch."""
    data = dist_case.problem(case)
    backbone, pfc = dist_case.build(case, data)
    loss = pfc(backbone(data["x"]), data["labels"], dist_case.STEP, valid=data["valid"])
    loss.backward()
    out = {"loss": loss.detach(), "backbone_grad": backbone.weight.grad.clone()}
    out |= {"bias_grad": backbone.bias.grad.clone(), "weight_grad": pfc.weight.grad.clone()}
    torch.optim.SGD([*backbone.parameters(), *pfc.parameters()], lr=dist_case.LR).step()
    return out | {"backbone_after": backbone.weight.detach(), "weight_after": pfc.weight.detach()}


@pytest.mark.parametrize("case", ["mlcd", "mlcd_features", "mlcd_padded", "cosface", "arcface"])
def test_two_processes_equal_one(two_processes, case):
    ranks, one = [r[case] for r in two_processes], _one_process(case)
    for rank in ranks:  # DDP-averaged backbone gradients and the loss match on every rank
        for key in ("loss", "backbone_grad", "bias_grad", "backbone_after"):
            torch.testing.assert_close(rank[key], one[key], rtol=1e-5, atol=1e-5)
    assert [len(r["shard_grad"]) for r in ranks] == [6, 5]  # 11 classes: the first rank holds one more
    for key, whole in (("shard_grad", "weight_grad"), ("shard_after", "weight_after")):
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), one[whole], rtol=1e-5, atol=1e-5)


def test_two_processes_sampled_equal_mlcd_loss_on_the_sampled_columns(two_processes):
    ranks = [r["mlcd_sampled"] for r in two_processes]
    data = dist_case.problem("mlcd_sampled")
    columns = torch.cat([r["sampled"] for r in ranks])  # global ids, rank 0's shard (21 classes) first
    positives = set(data["labels"][data["labels"] >= 0].tolist())
    shards = ((0, 21), (21, 20))  # 41 classes: (class_start, num_local) of ranks 0 and 1
    local = [len({p for p in positives if lo <= p < lo + n}) for lo, n in shards]
    expected = sum(p + int(0.5 * (n - p)) for p, (_, n) in zip(local, shards))  # MLCD: r of the negatives
    sampled = set(columns.tolist())
    assert len(sampled) == len(columns) == expected < 41 and positives <= sampled
    renumber = torch.full((41,), -1).index_put((columns,), torch.arange(len(columns)))
    labels = torch.where(data["labels"] >= 0, renumber[data["labels"].clamp(min=0)], -1)  # (B, 1)
    backbone, centres = data["backbone"].requires_grad_(), data["centres"].requires_grad_()
    embeddings = F.linear(data["x"], backbone, data["bias"])  # (B, D)
    cosine = F.normalize(embeddings) @ F.normalize(centres[columns]).T  # (B, k)
    loss = mlcd_loss(cosine, labels)
    loss.backward()
    for rank in ranks:
        assert rank["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        torch.testing.assert_close(rank["backbone_grad"], backbone.grad, rtol=1e-5, atol=1e-5)
    # unsampled centres get zero gradient on both sides
    torch.testing.assert_close(
        torch.cat([r["shard_grad"] for r in ranks]), centres.grad, rtol=1e-5, atol=1e-5
    )


def test_a_shard_from_another_rank_is_refused(two_processes):
    assert all("shard mismatch" in r["shard_guard"] for r in two_processes)
