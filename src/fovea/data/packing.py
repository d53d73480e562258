"""Packed micro-batches: a micro-batch's samples laid end to end in a few rows instead of one padded
row each.

Which samples make a step never changes (packing is a layout, so loss, gradients and the data
order are those of the unpacked run). Whole samples are placed, first-fit by decreasing length,
in rows of at most ``capacity`` tokens (the stage's ``pack_tokens``, never below the longest
sample): one row when attention is varlen (nothing is computed between samples), else rows of the
longest sample, so a masked row's attention never costs more than unpadded rows would. A row's
tail is one more padding "sample" with its own positions, never attended to by a real one.

Each sample's ``position_ids`` restart at 0 and the attention mask is None: with sdpa, fovea's
varlen attention (model/varlen.py) runs each sample alone; flash-attention runs its varlen kernel
on one row (``_is_packed_sequence``, batch 1); eager and flex get transformers' block-diagonal
causal mask (``find_packed_sequence_indices``). Each sample's first label is ignored (unpacked,
nothing predicts it; packed, the sample before would). Images keep their sample
(``image_samples``, which a question-aware fuser reads), in row order.
"""

from __future__ import annotations

import torch

from ..model.inputs import ModelInputs
from .labels import IGNORE

MASKED = ("eager", "flex_attention")
"""Attention implementations that transformers gives a per-sample mask for packed rows of any number
(masking_utils: ``find_packed_sequence_indices`` when the attention mask is None and there is no cache)."""
FLASH = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
"""Flash attention reads packing from position ids on a batch of one row only
(modeling_flash_attention_utils ``_is_packed_sequence``): a micro-batch is packed into one row."""


def packed_attention(implementation: str, budget: int | None) -> tuple[int | None, bool]:
    """(row budget, None for one row; whether to run fovea's varlen SDPA) for an LM's attention.
    sdpa becomes `model.varlen` (nothing computed between samples; transformers' own packed sdpa
    would mask a whole row's attention), flash keeps its varlen kernel; eager and flex keep
    transformers' block-diagonal mask in rows of the longest sample. Any other is refused."""
    if implementation == "sdpa":
        return budget, True
    if implementation in FLASH:
        return budget, False
    if implementation in MASKED:
        return budget or 0, False
    from ..errors import ConfigError

    raise ConfigError(
        f"packing: attention {implementation!r} is not known to keep packed samples apart "
        f"(sdpa, {', '.join(MASKED + FLASH)} are); set the stage's packing: false"
    )


PACK_BELOW = 0.9
"""A micro-batch is packed when its real tokens fill less than this share of the rows unpacked
padding makes. Above it there is little padding to save, and the per-sample attention calls are
not free; 0.9 is a choice, not a measured break-even (the demo's batches fill 0.44 and pack)."""


def worth_packing(lengths: list[int]) -> bool:
    """Whether padding would waste enough of a micro-batch with these sample lengths to pack it."""
    return len(lengths) > 1 and sum(lengths) < PACK_BELOW * len(lengths) * max(lengths)


def bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per row: first fit by decreasing length (ties by index), rows of at most
    `capacity` tokens (a longer sample has a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for r, left in enumerate(room):
            if lengths[i] <= left:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def pack(good: list[dict], pad_id: int, capacity: int | None = None) -> tuple[ModelInputs, torch.Tensor]:
    """(inputs with ``position_ids`` and no attention mask, labels) for the dataset's samples, in
    rows of at most max(longest sample, `capacity`) tokens (`capacity` None: all in one row)."""
    lengths = [len(x["input_ids"]) for x in good]
    rows = bins(lengths, sum(lengths) if capacity is None else max(max(lengths), capacity))
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    pixels, layouts, owners = [], [], []
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            x, n = good[i], lengths[i]
            ids[r, at : at + n] = x["input_ids"]
            labels[r, at + 1 : at + n] = x["labels"][1:]  # the first is nobody's target
            positions[r, at : at + n] = torch.arange(n)
            if x["pixel_values"] is not None:
                pixels.append(x["pixel_values"])
            layouts += x["image_layouts"]
            owners += [i] * len(x["image_layouts"])
            at += n
        positions[r, at:] = torch.arange(width - at)  # the padding: a sample of its own
    inputs = ModelInputs(
        input_ids=ids,
        position_ids=positions,
        pixel_values=torch.cat(pixels) if pixels else None,
        image_layouts=layouts or None,
        image_samples=owners or None,
        questions=[x["question"] for x in good],
    )
    return inputs, labels
