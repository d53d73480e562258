"""Deterministic data order shared by every process: the key to exact resume and to N processes
training exactly like one.

Each epoch is a seeded permutation of the dataset (optionally grouped by length). It is cut into
*global* micro-batches of `micro * world` samples; process `rank` takes its slice of each. A
position is (epoch, global micro-batch index), so resuming is starting the same permutation at
the saved index, and one process with micro-batch `micro * world` sees exactly the union of what
`world` processes see.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch


def epoch_order(
    n: int, seed: int, epoch: int, lengths: list[int] | None = None, group: int = 64
) -> list[int]:
    """Permutation of range(n) for `epoch`; with `lengths`, chunks of `group` are sorted by
    length (longest first) so batches waste little padding, and the chunks stay shuffled."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if lengths is None:
        return order
    chunks = [sorted(order[i : i + group], key=lambda j: -lengths[j]) for i in range(0, n, group)]
    random.Random(seed + epoch).shuffle(chunks)
    return [j for chunk in chunks for j in chunk]


def micro_batches(
    n: int,
    *,
    micro: int,
    world: int,
    rank: int,
    seed: int,
    start: tuple[int, int],
    lengths: list[int] | None = None,
) -> Iterator[tuple[int, int, list[int]]]:
    """Endless (epoch, global index, this process's sample indices), from position `start`."""
    epoch, index = start
    width = micro * world
    while True:
        order = epoch_order(n, seed, epoch, lengths)
        count = n // width if n >= width else 1
        for b in range(index, count):
            chunk = order[b * width : (b + 1) * width]
            yield epoch, b, chunk[rank * micro : (rank + 1) * micro]
        epoch, index = epoch + 1, 0
