"""PartialFC: class centres sharded over processes, with MLCD's or UNICOM's loss computed exactly.

Follows the PartialFC paper (An et al., "Killing Two Birds with One Stone", CVPR 2022,
arXiv:2203.15565) and UNICOM's ``unicom/partial_fc.py`` (``PartialFC_V2``, itself insightface's
``arcface_torch/partial_fc_v2.py``): each of W processes owns ``C // W (+1)`` class centres, the
batch's embeddings and labels are all-gathered, every process scores the whole global batch against
its own centres only, and the softmax / log-sum-exp denominators are all-reduced. Per step a
process keeps every positive class of the batch plus a random fraction of its other classes, and
(UNICOM) optionally a random subset of feature dimensions.

Where fovea differs, and why:

* What ``sample_rate`` is a fraction of depends on the loss (``rate_of``). For "margin" it is
  PartialFC's: r of all classes, positives included. For "mlcd" it is the MLCD paper's
  |Ω'_n| = r·|Ω_n|: every positive plus r of the *negatives*. At MLCD's scale the two differ in
  kind: a 32K batch with 8 labels each over 1M classes has ~230K distinct positives, more than
  r·C = 100K, so PartialFC's rule would keep no random negative at all and r = 0.01 ... 0.2
  would all keep the same classes, while the paper's ablation reports 73.4/75.1/75.2/74.9.
* Any registered loss (`fovea.pretrain.losses`): MLCD's separated positive/negative log-sum-exps
  over up to L labels per sample (the original is single-label softmax only), and the
  combined-margin softmax. Each formula is written once there, over a log-sum-exp and a sum that
  this module shards; the ArcFace target uses the true derivative of
  cos(m1·θ + m2) (the original computes it in place under ``no_grad``, a straight-through gradient).
* Backward is autograd through two custom collectives (`_GatherBatch`, `_SumOverRanks`, whose
  backward factors are the gradient contract below), not a hand-written loss backward; the loss
  still keeps only about two (B, k) fp32 tensors alive at its peak.
* The random draws come from a generator seeded by (seed, step, rank): no RNG state to checkpoint,
  and a resumed run draws the same classes.
* The feature subset is the same on every rank (the original draws it per rank), so all shards
  score a sample in one subspace and W processes still equal one; it is picked before the
  all-gather, which then moves ``feature_rate`` of the bytes.
* Local batch sizes, shapes and steps are checked across ranks (one tiny all-gather) before the big
  collectives, so a mismatch raises the same ValueError everywhere instead of hanging.
* Smaller things: every rank scores at least one class (``int(r * num_local)`` can be 0); a margin
  sample with no label anywhere is left out of the mean (the original takes log(1e-30) for it);
  no logit clamp to [-1, 1] and no fp16 flag (the product follows autocast, the loss runs in
  fp32); no inter-class filtering; the state dict carries the shard's identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .losses import LossConfig, loss_config

_INIT_BLOCK = 4096


def _initial_centres(start: int, count: int, dim: int, seed: int) -> torch.Tensor:
    """Rows [start, start + count) of the N(0, 0.01) centre table, the same whatever the number of
    processes: each block of 4096 classes has its own generator, seeded by (seed, block), so W
    shards are exactly the rows of one process's table (and W processes can equal one)."""
    rows = []
    for block in range(start // _INIT_BLOCK, (start + count - 1) // _INIT_BLOCK + 1 if count else 0):
        g = torch.Generator().manual_seed(seed * 1_000_003 + block)
        table = torch.normal(0.0, 0.01, (_INIT_BLOCK, dim), generator=g)
        lo, hi = max(start, block * _INIT_BLOCK), min(start + count, (block + 1) * _INIT_BLOCK)
        rows.append(table[lo - block * _INIT_BLOCK : hi - block * _INIT_BLOCK])
    return torch.cat(rows) if rows else torch.empty(0, dim)


@dataclass(frozen=True)
class ShardInfo:
    """Which classes this process holds: rows ``[class_start, class_start + num_local)`` of C."""

    num_classes: int
    world_size: int
    rank: int
    class_start: int
    num_local: int


class PartialFC(nn.Module):
    """Sharded class centres and a registered loss (`fovea.pretrain.losses`: ``"mlcd"``, ``"margin"``
    or its config), whose formula runs here over log-sum-exps and sums all-reduced across ranks.

    The loss config's ``sample_rate`` r in (0, 1] is a fraction of the negatives
    (``rate_of="negatives"``, MLCD's) or of all classes (``"classes"``, PartialFC's, the margin
    loss's), redrawn every step from (seed, step, rank); ``feature_rate`` keeps
    ``int(feature_rate * D)`` dimensions.

    ``forward(embeddings, labels, step, valid=None)`` takes this process's (b, D) embeddings and
    labels (mlcd: (b, L) global class ids, -1 = none; margin: (b,) or (b, 1)), b equal on every
    rank, and returns the loss of the *global* batch (the mean over all W·b samples, less the
    padding rows that `valid` marks False), the same value on every rank.

    Gradient contract (W processes equal one process with the whole batch):

    * the backbone that makes ``embeddings`` is wrapped in DDP/FSDP (accelerate), which averages
      parameter gradients over ranks; the embeddings' gradient leaving this module is W × this
      rank's rows of the single-process gradient, so after the averaging the backbone gradient is
      exactly the single-process one;
    * ``weight`` (this rank's shard) must NOT be wrapped in DDP: its gradient is already the
      matching rows of the single-process weight gradient (give it to the optimizer, not to
      ``accelerator.prepare`` as a model). With sampling, unsampled rows get a zero gradient; with
      AdamW they still move by momentum and weight decay, as in ``PartialFC_V2``.

    ``state_dict()`` holds this rank's shard plus its `ShardInfo` (``_extra_state``); loading a
    shard saved by another rank or world size raises ValueError.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        loss: LossConfig | str | dict = "mlcd",
        *,
        rate_of: Literal["negatives", "classes"] | None = None,
        seed: int = 0,
        group: dist.ProcessGroup | None = None,
    ):
        super().__init__()
        self.group = group
        self.rank, self.world_size = _rank_and_world(group)
        self.loss = loss_config(loss)  # its formula, scale and margins, and the sampling rates
        _check_config(embedding_dim, num_classes, self.world_size, seed)
        if rate_of not in (None, "negatives", "classes"):
            raise ValueError(f"rate_of must be 'negatives', 'classes' or None, got {rate_of!r}")
        # None: each loss's own paper (MLCD: of the negatives; PartialFC/UNICOM: of all classes)
        self.rate_of = rate_of or self.loss.rate_of
        self.embedding_dim, self.num_classes, self.seed = embedding_dim, num_classes, seed
        self.sample_rate, self.feature_rate = self.loss.sample_rate, self.loss.feature_rate
        # the first C % W ranks hold one class more, as in the original
        per, extra = divmod(num_classes, self.world_size)
        self.num_local = per + int(self.rank < extra)
        self.class_start = per * self.rank + min(self.rank, extra)
        self.weight = nn.Parameter(_initial_centres(self.class_start, self.num_local, embedding_dim, seed))

    def sample_size(self, num_positives: int) -> int:
        """How many of this rank's classes a step scores, given its distinct local positives."""
        if self.rate_of == "negatives":  # MLCD: every positive and r of the negatives
            size = num_positives + int(self.sample_rate * (self.num_local - num_positives))
        else:  # PartialFC: r of all classes, positives included (every positive if they are more)
            size = max(int(self.sample_rate * self.num_local), num_positives)
        # at least one, so a tiny shard still has a softmax term (int(r * num_local) can be 0)
        return max(1, size)

    def shard_info(self) -> ShardInfo:
        return ShardInfo(self.num_classes, self.world_size, self.rank, self.class_start, self.num_local)

    def get_extra_state(self) -> torch.Tensor:
        # a tensor, not a dict, so the state dict still saves with safetensors
        info = self.shard_info()
        return torch.tensor([info.num_classes, info.world_size, info.rank, info.class_start, info.num_local])

    def set_extra_state(self, state: torch.Tensor) -> None:
        saved = ShardInfo(*(int(v) for v in state.tolist()))
        if saved != self.shard_info():
            raise ValueError(
                f"PartialFC shard mismatch: this process is {self.shard_info()}, the checkpoint holds "
                f"{saved}; resume with the world size it was saved with ({saved.world_size})"
            )

    def extra_repr(self) -> str:
        return (
            f"loss={self.loss.type}, classes={self.num_classes}, local=[{self.class_start}, "
            f"{self.class_start + self.num_local}), rank={self.rank}/{self.world_size}, "
            f"sample_rate={self.sample_rate} of {self.rate_of}, feature_rate={self.feature_rate}"
        )

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, step: int, *, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The global batch's loss; `valid` (b,) bool marks real rows (False: padding, left out)."""
        labels = self._check_inputs(embeddings, labels, step, valid)  # (b, L)
        keep = torch.ones(len(labels), dtype=torch.bool, device=labels.device) if valid is None else valid
        dims = self.feature_dims(step, embeddings.device)
        if dims is not None:
            embeddings = embeddings[:, dims]  # (b, D) -> (b, d)
        gathered = embeddings  # (B, d), B = W·b
        if self.world_size > 1:
            gathered = _GatherBatch.apply(embeddings, self.group, self.world_size)
        # labels and the valid flag travel in one all-gather: (b, L) + (b, 1) -> (B, L + 1)
        packed = _gather(torch.cat([labels, keep[:, None].long()], 1), self.group, self.world_size)
        all_valid = packed[:, -1].bool()  # (B,)
        all_labels = packed[:, :-1].masked_fill(~all_valid[:, None], -1)  # (B, L) global ids
        self._check_label_range(all_labels)
        index, local = self.sample_classes(all_labels, step)  # (k,) rows; (B, L) ids among them
        weight = self.weight if index is None else self.weight[index]  # (k, D)
        if dims is not None:
            weight = weight[:, dims]  # (k, D) -> (k, d)
        # the (B, k) cosines go straight into the loss, unnamed here, so the loss can free them early
        multi = self.loss.multi_label
        per_sample = self.loss.per_sample(
            _cosine(gathered, weight), local if multi else local[:, :1], self._logsumexp, self._sum_over_ranks
        )
        counted = all_valid if multi else all_labels[:, 0] >= 0  # (B,) padding and label-less rows out
        if not counted.any():  # every rank sees the same global flags, so all return here
            return per_sample.sum() * 0.0
        return per_sample[counted].mean()

    def _sum_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(x, self.group, self.world_size)

    def _logsumexp(self, x: torch.Tensor, one: bool) -> torch.Tensor:
        """log(Σ_j exp(x_j)) per row over the columns of every rank (with a 1 inside when `one`);
        -inf entries are absent terms. (B, k) -> (B,), the same on every rank."""
        with torch.no_grad():  # the shift cancels in value and gradient, so it needs no grad
            shift = x.amax(1) if x.shape[1] else x.new_full(x.shape[:1], float("-inf"))
            shift = shift.clamp(min=0) if one else shift
            if self.world_size > 1:
                dist.all_reduce(shift, dist.ReduceOp.MAX, group=self.group)
            shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        total = _SumOverRanks.apply((x - shift[:, None]).exp_().sum(1), self.group, self.world_size)
        if one:
            total = total + torch.exp(-shift)
        return shift + torch.log(total)

    def sample_classes(self, labels: torch.Tensor, step: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """This rank's classes for `step`: every local positive of the global batch's `labels`
        (B, L) plus random negatives, `sample_size` in all. Returns the
        sorted shard rows (k,) (None when sample_rate is 1: all of them) and the labels renumbered
        among those rows, -1 for classes of other ranks. The draw depends only on (seed, step, rank)."""
        inside = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        local = torch.where(inside, labels - self.class_start, torch.full_like(labels, -1))
        if self.sample_rate >= 1.0:
            return None, local
        with torch.no_grad():
            positives = torch.unique(local[local >= 0])  # sorted
            keep = self.sample_size(len(positives))
            score = torch.rand(self.num_local, generator=_generator(self.seed, 0, step, self.rank))
            score = score.to(self.weight.device)
            score[positives] = 2.0  # above every random score: positives are always kept
            index = torch.topk(score, keep).indices.sort().values
            renumbered = torch.searchsorted(index, local.clamp(min=0))
        return index, torch.where(local >= 0, renumbered, local)

    def feature_dims(self, step: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The sorted feature dimensions `step` scores with, ``int(feature_rate * D)`` of them (None:
        all). The same on every rank (seeded by (seed, step) only): one subspace per step."""
        if self.feature_rate is None:
            return None
        keep = max(1, int(self.feature_rate * self.embedding_dim))
        if keep >= self.embedding_dim:
            return None
        dims = torch.randperm(self.embedding_dim, generator=_generator(self.seed, 1, step, 0))
        return dims[:keep].sort().values.to(device)

    def _check_inputs(self, embeddings, labels, step, valid) -> torch.Tensor:
        """Validate every rank's shapes on every rank (so all raise alike); labels -> (b, L)."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        mine = _shape_record(embeddings, labels, step, valid)
        records = mine[None] if self.world_size == 1 else _gather(mine[None], self.group, self.world_size)
        records = records.tolist()  # (W, 10)
        for rank, record in enumerate(records):
            _check_shapes(record, self.embedding_dim, self.loss.multi_label, rank, self.world_size)
        if len({(r[1], r[5], r[8]) for r in records}) > 1:  # the all-gathers need equal shapes
            seen = [(r[1], r[5], r[8]) for r in records]
            raise ValueError(f"every rank needs the same batch size, label count and step; got {seen}")
        return labels if labels.dim() == 2 else labels[:, None]

    def _check_label_range(self, labels: torch.Tensor) -> None:
        if labels.numel() and (labels.max() >= self.num_classes or labels.min() < -1):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}) or be -1, "
                f"got {labels.min().item()}..{labels.max().item()}"
            )


def _cosine(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, d) x (k, d) -> (B, k) cosines, normalised after any feature subset (as the original),
    in at least fp32 for the exp/log arithmetic (the product itself may run under autocast)."""
    cosine = F.linear(F.normalize(embeddings.to(weight.dtype)), F.normalize(weight))
    return cosine.to(torch.promote_types(cosine.dtype, torch.float32))


def _shape_record(embeddings, labels, step: int, valid) -> torch.Tensor:
    """[emb ndim, b, D, label ndim, label rows, label cols, is int64, is float, step, valid ok]."""
    b = embeddings.shape[0] if embeddings.dim() else 0
    valid_ok = valid is None or (valid.shape == (b,) and valid.dtype == torch.bool)
    record = [
        embeddings.dim(),
        embeddings.shape[0] if embeddings.dim() else 0,
        embeddings.shape[-1] if embeddings.dim() else 0,
        labels.dim(),
        labels.shape[0] if labels.dim() else 0,
        labels.shape[1] if labels.dim() > 1 else 1,
        int(labels.dtype == torch.long),
        int(embeddings.is_floating_point()),
        step,
        int(valid_ok),
    ]
    return torch.tensor(record, dtype=torch.long, device=embeddings.device)


def _check_shapes(record: list[int], dim: int, multi_label: bool, rank: int, world: int) -> None:
    emb_dims, b, d, label_dims, rows, cols, is_long, is_float, _, valid_ok = record
    where = f" (rank {rank})" if world > 1 else ""
    if emb_dims != 2 or d != dim or not is_float or b < 1:
        raise ValueError(
            f"embeddings must be float (b, {dim}), b >= 1{where}, got ndim {emb_dims}, b = {b}, D = {d}"
        )
    shaped = label_dims == 2 if multi_label else label_dims == 1 or (label_dims == 2 and cols == 1)
    if not shaped or rows != b:
        shape = "(b, L)" if multi_label else "(b,) or (b, 1)"
        raise ValueError(f"labels must be {shape} with b = {b}{where}, got ndim {label_dims}, {rows} rows")
    if not is_long:
        raise ValueError(f"labels must be int64 class ids{where}")
    if not valid_ok:
        raise ValueError(f"valid must be a (b,) = ({b},) bool mask{where}")


def _check_config(dim, num_classes, world, seed) -> None:
    if dim < 1 or num_classes < world:
        raise ValueError(
            f"embedding_dim must be >= 1 and num_classes >= the world size ({world}), "
            f"got {dim} and {num_classes}"
        )
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _generator(seed: int, purpose: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, purpose, step, rank), mixed by SeedSequence;
    drawing on the CPU makes the draw the same on any device (a few KB per step to copy)."""
    state = np.random.SeedSequence(seed, spawn_key=(purpose, step, rank)).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def _rank_and_world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    if group is not None:
        raise ValueError("group was given but torch.distributed is not initialised")
    return 0, 1


def _gather(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """All-gather equal-sized tensors along dim 0, no gradient. (b, ...) -> (W·b, ...)."""
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts)


class _GatherBatch(torch.autograd.Function):
    """All-gather the local batches, with the gradient DDP needs.

    Each rank's loss only sees its own class shard, so its gradient for the gathered batch is a
    partial sum; this rank's true gradient is the sum of every rank's gradient for its rows
    (a reduce-scatter). Multiplied by W because DDP then averages the backbone's gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, world: int) -> torch.Tensor:
        ctx.group, ctx.world = group, world
        return _gather(x, group, world)  # (b, d) -> (W·b, d)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rank = dist.get_rank(ctx.group)
        grad = grad.contiguous()
        if dist.get_backend(ctx.group) == dist.Backend.NCCL:
            mine = grad.new_empty(grad.shape[0] // ctx.world, *grad.shape[1:])
            dist.reduce_scatter_tensor(mine, grad, group=ctx.group)
        else:  # gloo has no reduce-scatter: sum everything, keep this rank's rows
            dist.all_reduce(grad, group=ctx.group)
            mine = grad.chunk(ctx.world)[rank]  # (W·b, d) -> (b, d)
        return mine * ctx.world, None, None


class _SumOverRanks(torch.autograd.Function):
    """Sum over ranks whose output feeds a loss computed identically on every rank.

    Backward is the identity (not autograd's all-reduce, which would sum W identical upstream
    gradients into W×): each rank's upstream gradient already is d(loss)/d(sum), and d(sum)/d(its
    own term) is 1."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, world: int) -> torch.Tensor:
        x = x.clone()
        if world > 1:
            dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None
