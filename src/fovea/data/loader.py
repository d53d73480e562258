"""Micro-batches made ahead of the step, in DataLoader workers, in exactly the order given.

The data order (train/data_order.py) is a deterministic, endless list of (epoch, index, sample
indices). With ``workers`` > 0, worker w makes every item whose place in that list is w modulo the
worker count, and torch's DataLoader hands the items back round-robin, so the batches are the
order's, one by one, whatever the worker count: a resumed run starts the same list at its saved
position and sees the same batches. Reading, decoding, tiling, tokenizing and collating all
happen in the workers; a bad record comes back as a skip inside its batch, counted and named by
the training loop as when it runs in the main process. Each worker runs torch on one thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader, IterableDataset, get_worker_info


class _Made(IterableDataset):
    def __init__(self, order: Callable[[], Iterator[tuple]], make: Callable[[int, list[int]], dict]):
        self.order, self.make = order, make

    def __iter__(self):
        info = get_worker_info()
        mine, count = (info.id, info.num_workers) if info is not None else (0, 1)
        for place, (epoch, index, indices) in enumerate(self.order()):
            if place % count == mine:
                yield epoch, index, self.make(epoch, indices)


def made_ahead(
    order: Callable[[], Iterator[tuple]],
    make: Callable[[int, list[int]], dict],
    workers: int,
    prefetch: int = 2,
) -> Iterator[tuple]:
    """(epoch, index, make(epoch, indices)) for each item of `order()` (a fresh iterator of (epoch,
    index, indices)), made by `workers` processes `prefetch` items each ahead (0: here, when asked)."""
    if workers <= 0:
        for epoch, index, indices in order():
            yield epoch, index, make(epoch, indices)
        return
    loader = DataLoader(
        _Made(order, make), batch_size=None, num_workers=workers, prefetch_factor=prefetch, collate_fn=_same
    )
    yield from loader


def _same(item):
    return item
