"""PartialFC step time and memory: r = 0.1 sampled negatives vs the full softmax / full MLCD (r = 1).

One process, fovea's `PartialFC` on its own (a (B, D) leaf tensor stands in for the backbone), for
each loss (MLCD with L = 8 random labels per sample, r of the negatives beside every positive;
margin softmax with 1 label, r of all classes) and each class count C:

* step: forward + backward (a new class draw each step), median of `--repeats`, r = 1 and
  r = 0.1 alternating in one process so machine noise hits both alike;
* step memory, each rate in a fresh process: the peak RSS of one step (after a warm-up step)
  above the RSS just before it. Linux: the high-water mark is reset through
  /proc/self/clear_refs, and glibc is told to mmap every block over 64 KiB, so freed memory
  leaves RSS at once. It includes the dense (C, D) fp32 weight gradient, which PartialFC_V2
  allocates too; the weights themselves are outside it. On --device cuda it is torch's
  max_memory_allocated above memory_allocated instead.

A second table is arithmetic only, for 1M and 2M classes across 8-64 GPUs at a 32K global batch:
each GPU's centre shard with its gradient and AdamW's two moments, and one fp32 (B, k) logits
tensor at r = 1 and r = 0.1 (k = the classes a GPU scores). A step holds a few such tensors at
once (the first table shows how many on this machine), so the logits, not the shard, are what
sampling saves.

    python benchmarks/partial_fc.py [--classes 10000,100000,300000] [--dim 512] [--batch 256]
        [--losses mlcd,margin] [--repeats 3] [--device cpu|cuda] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

from common import interleaved, memory_mark, memory_peak, table

GiB, MiB = 2**30, 2**20
RATES = (1.0, 0.1)


def _setting(loss: str, classes: int, rate: float, dim: int, batch: int, device: str):
    """A PartialFC and a step function (forward + backward) on random embeddings and labels."""
    import torch

    from fovea.pretrain.partial_fc import PartialFC

    torch.manual_seed(0)
    pfc = PartialFC(dim, classes, loss=loss, sample_rate=rate).to(device)
    embeddings = torch.randn(batch, dim, device=device, requires_grad=True)
    labels = torch.randint(0, classes, (batch, 8 if loss == "mlcd" else 1), device=device)
    count = iter(range(10**9))

    def step() -> None:
        pfc.weight.grad = embeddings.grad = None  # as optimizer.zero_grad() leaves them
        pfc(embeddings, labels, next(count)).backward()  # a new draw every step
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        pfc.weight.grad = embeddings.grad = None

    return step


def measure_time(loss: str, classes: int, dim: int, batch: int, repeats: int, device: str) -> dict:
    """Child process: median step seconds at r = 1 and r = 0.1, run alternately."""
    steps = {str(rate): _setting(loss, classes, rate, dim, batch, device) for rate in RATES}
    return interleaved(steps, repeats)


def measure_memory(loss: str, classes: int, rate: float, dim: int, batch: int, device: str) -> dict:
    """Child process (alone, so the memory is its own): step memory bytes after a warm-up step."""
    step = _setting(loss, classes, rate, dim, batch, device)
    step()
    base = memory_mark(device)
    step()
    peak = memory_peak(device)
    return {"memory": None if peak is None else peak - base}


def run_child(args, *child: str) -> dict:
    # glibc then mmaps (and unmaps on free) every block over 64 KiB, so RSS follows live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"} if child[0] == "memory" else None
    command = [sys.executable, __file__, "--child", *child, "--dim", str(args.dim)]
    command += ["--batch", str(args.batch), "--repeats", str(args.repeats), "--device", args.device]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measured_table(args) -> str:
    rows = []
    for loss in args.losses:
        for classes in args.classes:
            t = run_child(args, "time", loss, str(classes))
            full, part = (run_child(args, "memory", loss, str(classes), str(rate)) for rate in RATES)
            rows.append([loss, f"{classes:,}", f"{t['1.0'] * 1e3:.0f}", f"{t['0.1'] * 1e3:.0f}"])
            rows[-1].append(f"**{t['1.0'] / t['0.1']:.2f}x**")
            if full["memory"] is None:
                rows[-1] += ["n/a"] * 4
                continue
            rows[-1] += [f"{full['memory'] / MiB:.0f}", f"{part['memory'] / MiB:.0f}"]
            rows[-1].append(f"**{full['memory'] / part['memory']:.2f}x**")
            rows[-1].append(f"{classes * args.dim * 4 / MiB:.0f}")
    head = ["loss", "C", "r=1 ms", "r=0.1 ms", "speed-up", "r=1 step MiB", "r=0.1 step MiB", "memory ratio"]
    head.append("of which weight grad MiB")
    return table(head, rows)


def arithmetic_table(dim: int, batch: int = 32768) -> str:
    """Per-GPU bytes for 1M / 2M classes over 8-64 GPUs at a global batch of `batch`."""
    rows = []
    for classes in (1_000_000, 2_000_000):
        for gpus in (8, 16, 32, 64):
            local = math.ceil(classes / gpus)
            state = local * dim * (4 + 4 + 8)  # fp32 weight, gradient, AdamW m and v
            logits = {rate: batch * max(1, int(rate * local)) * 4 for rate in RATES}
            row = [f"{classes // 10**6}M", gpus, f"{local:,}", f"{state / GiB:.2f}"]
            row += [f"{logits[1.0] / GiB:.2f}", f"{logits[0.1] / GiB:.2f}"]
            rows.append(row + [f"**{logits[1.0] / logits[0.1]:.1f}x**"])
    head = ["C", "GPUs", "classes/GPU", "centres+grad+AdamW GiB", "logits r=1 GiB", "logits r=0.1 GiB"]
    return table(head + ["logits ratio"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", default="10000,100000,300000", help="comma-separated class counts")
    parser.add_argument("--losses", default="mlcd,margin", help="comma-separated: mlcd, margin")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)"
    )
    parser.add_argument("--quick", action="store_true", help="C = 10k, 30k, one repeat: a smoke run")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # time|memory LOSS C [R]
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        kind, loss, classes = args.child[0], args.child[1], int(args.child[2])
        if kind == "time":
            result = measure_time(loss, classes, args.dim, args.batch, args.repeats, args.device)
        else:
            result = measure_memory(loss, classes, float(args.child[3]), args.dim, args.batch, args.device)
        print(json.dumps(result))
        return
    args.classes = [10_000, 30_000] if args.quick else [int(c) for c in args.classes.split(",")]
    args.repeats = 1 if args.quick else args.repeats
    args.losses = args.losses.split(",")
    threads = f", {args.threads} thread(s)" if args.device == "cpu" else ""
    print(f"PartialFC, one process on {args.device}{threads}: D = {args.dim}, B = {args.batch}\n")
    print(measured_table(args) + "\n")
    gathered = 32768 * args.dim * 4 / MiB
    print(f"Per GPU, D = {args.dim}, global batch 32,768 (arithmetic; the all-gathered embeddings add")
    print(f"{gathered:.0f} MiB whatever C and r)\n\n{arithmetic_table(args.dim)}")


if __name__ == "__main__":
    main()
