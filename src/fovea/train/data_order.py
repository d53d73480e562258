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
    n: int,
    seed: int,
    epoch: int,
    lengths: list[int] | None = None,
    group: int = 64,
    modality: list[bool] | None = None,
) -> list[int]:
    """Permutation of range(n) for `epoch`; with `lengths`, chunks of `group` are sorted by
    length (longest first) so batches waste little padding, and the chunks stay shuffled. With
    `modality` (whether each sample has images), chunks hold one modality each, as LLaVA-NeXT's
    ``group_by_modality_length`` makes its batches (what each leaves over is mixed, at the end)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    if lengths is None:
        return order
    streams = [order] if modality is None else [[j for j in order if modality[j] == m] for m in (True, False)]
    chunks, leftover = [], []
    for stream in streams:
        whole = len(stream) - len(stream) % group if modality is not None else len(stream)
        chunks += [stream[i : i + group] for i in range(0, whole, group)]
        leftover += stream[whole:]
    chunks = [sorted(chunk, key=lambda j: -lengths[j]) for chunk in chunks]
    random.Random(seed + epoch).shuffle(chunks)
    # what each modality leaves over goes last, so every shuffled chunk starts on a batch boundary
    rest = [
        sorted(leftover[i : i + group], key=lambda j: -lengths[j]) for i in range(0, len(leftover), group)
    ]
    return [j for chunk in chunks + rest for j in chunk]


def micro_batches(
    n: int,
    *,
    micro: int,
    world: int,
    rank: int,
    seed: int,
    start: tuple[int, int],
    lengths: list[int] | None = None,
    modality: list[bool] | None = None,
) -> Iterator[tuple[int, int, list[int]]]:
    """Endless (epoch, global index, this process's sample indices), from position `start`. With
    `modality`, each global micro-batch is all one modality (chunks of 8 of them, by length)."""
    epoch, index = start
    width = micro * world
    group = 64 if modality is None else 8 * width
    while True:
        order = epoch_order(n, seed, epoch, lengths, group, modality)
        count = n // width if n >= width else 1
        for b in range(index, count):
            chunk = order[b * width : (b + 1) * width]
            yield epoch, b, chunk[rank * micro : (rank + 1) * micro]
        epoch, index = epoch + 1, 0
