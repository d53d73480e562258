"""Two gloo processes on the CPU run PartialFC under a DDP backbone; test_partial_fc.py compares
what they save with one process and the whole batch.

    python tests/partial_fc_dist.py OUT_DIR

Each rank takes its half of one global batch (the same seeded tensors everywhere), trains one SGD
step, and saves OUT_DIR/rank{r}.pt: per case the loss, the backbone gradient after DDP's averaging,
its weight-shard gradient, the weights after the step, and for the sampled case its sampled classes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fovea.pretrain.partial_fc import PartialFC

WORLD = 2
IN_DIM, DIM, BATCH, STEP, LR = 6, 8, 8, 5, 0.5

# name -> (the loss config, classes, labels per sample); class counts are odd, so
# the first rank holds one class more
CASES = {
    "mlcd": ({"type": "mlcd", "sample_rate": 1.0}, 11, 3),
    "mlcd_features": ({"type": "mlcd", "sample_rate": 1.0, "feature_rate": 0.5}, 11, 3),
    "mlcd_sampled": ({"type": "mlcd", "sample_rate": 0.5}, 41, 1),
    "mlcd_padded": ({"type": "mlcd", "sample_rate": 1.0}, 11, 3),
    "cosface": ({"type": "margin", "sample_rate": 1.0, "m3": 0.4}, 11, 1),
    "arcface": ({"type": "margin", "sample_rate": 1.0, "m2": 0.5, "m3": 0.0}, 11, 1),
}


def problem(case: str) -> dict[str, torch.Tensor]:
    """The global batch and the initial weights, identical on every rank and in the test."""
    settings, classes, per_sample = CASES[case]
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (BATCH, per_sample), generator=g)
    labels[1, per_sample - 1 :] = -1  # fewer labels
    labels[6] = -1  # none at all (margin: left out of the mean)
    if settings["type"] == "margin":
        labels = labels[:, 0].clone()  # (B,)
    valid = torch.ones(BATCH, dtype=torch.bool)
    if case == "mlcd_padded":
        valid[[2, 5]] = False  # a padding row on each rank (a trainer's skipped images)
    return {
        "valid": valid,
        "x": torch.randn(BATCH, IN_DIM, generator=g, dtype=torch.float64),
        "labels": labels,
        "backbone": torch.randn(DIM, IN_DIM, generator=g, dtype=torch.float64) * 0.5,
        "bias": torch.randn(DIM, generator=g, dtype=torch.float64) * 0.1,
        "centres": torch.randn(classes, DIM, generator=g, dtype=torch.float64),
    }


def build(case: str, data: dict, group=None) -> tuple[nn.Linear, PartialFC]:
    settings, classes, _ = CASES[case]
    backbone = nn.Linear(IN_DIM, DIM).double()
    pfc = PartialFC(DIM, classes, dict(settings), group=group).double()
    with torch.no_grad():
        backbone.weight.copy_(data["backbone"])
        backbone.bias.copy_(data["bias"])
        pfc.weight.copy_(data["centres"][pfc.class_start : pfc.class_start + pfc.num_local])
    return backbone, pfc


def run_case(case: str, rank: int) -> dict[str, torch.Tensor]:
    data = problem(case)
    backbone, pfc = build(case, data)
    ddp = DistributedDataParallel(backbone)
    mine = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    loss = pfc(ddp(data["x"][mine]), data["labels"][mine], STEP, valid=data["valid"][mine])
    loss.backward()
    out = {
        "loss": loss.detach(),
        "backbone_grad": backbone.weight.grad.clone(),
        "bias_grad": backbone.bias.grad.clone(),
        "shard_grad": pfc.weight.grad.clone(),
    }
    if pfc.sample_rate < 1:
        all_labels = data["labels"] if data["labels"].dim() == 2 else data["labels"][:, None]
        out["sampled"] = pfc.sample_classes(all_labels, STEP)[0] + pfc.class_start
    torch.optim.SGD([*ddp.parameters(), *pfc.parameters()], lr=LR).step()
    out["backbone_after"] = backbone.weight.detach().clone()
    out["shard_after"] = pfc.weight.detach().clone()
    return out


def shard_guard(rank: int) -> str:
    """Loading another rank's shard must raise; returns the message (or 'loaded')."""
    pfc = PartialFC(DIM, 11)
    state = pfc.state_dict()
    gathered = [None] * WORLD
    dist.all_gather_object(gathered, state)
    try:
        PartialFC(DIM, 11).load_state_dict(gathered[1 - rank])
    except ValueError as error:
        return str(error)
    return "loaded"


def worker(rank: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=WORLD)
    results = {case: run_case(case, rank) for case in CASES}
    results["shard_guard"] = shard_guard(rank)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.multiprocessing.spawn(worker, args=(sys.argv[1],), nprocs=WORLD, join=True)
