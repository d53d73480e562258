"""The running batch of a continuous-batching engine: its sequences, KV cache, mask and positions.

Rows are left-padded: a newcomer's prefill is a batch of its own, then joins the running one by
padding the shorter of the two caches (and attention masks) on the left, so every row's newest
token sits in the last column. Padded positions are masked out and position ids count only real
tokens (as transformers' generate does with left padding), so a row decodes exactly as it would
alone. Finished rows leave through the cache's own ``batch_select_indices``.

    cache per layer: keys/values (B, H, T, D)   mask: (B, T)   position: (B, 1)   logits: (B, V)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from ..model.kv_cache import cache_kwargs, output_cache


class RunningBatch:
    def __init__(
        self, sequences: list, cache, mask: torch.Tensor, position: torch.Tensor, logits: torch.Tensor
    ):
        self.sequences, self.cache, self.mask, self.position, self.logits = (
            sequences,
            cache,
            mask,
            position,
            logits,
        )

    @classmethod
    @torch.inference_mode()
    def prefill(cls, model, sequences: list, prepared: list[dict]) -> RunningBatch:
        """One forward pass over the newcomers' prompts (all their images through the tower)."""
        rows = [p["input_ids"][0][p["attention_mask"][0].bool()].tolist() for p in prepared]
        ids, mask = model._pad_left(rows)
        ids, mask = ids.to(model.device), mask.to(model.device)
        embeds = model.embed_inputs({**model.join_inputs(prepared), "input_ids": ids})
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model.lm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        return cls(sequences, output_cache(out), mask, positions[:, -1:], out.logits[:, -1])

    @property
    def joinable(self) -> bool:
        """Whether other rows can join: every cache layer is a plain growing one (a sliding-window
        or static cache would need its own surgery; such batches run to the end instead)."""
        return all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def join(self, other: RunningBatch) -> None:
        """Append `other`'s rows, left-padding whichever batch is shorter."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_seq(mine.keys, width), _pad_seq(theirs.keys, width)])
            mine.values = torch.cat([_pad_seq(mine.values, width), _pad_seq(theirs.values, width)])
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(other.mask, width)])
        self.position = torch.cat([self.position, other.position])
        self.logits = torch.cat([self.logits, other.logits])
        self.sequences += other.sequences

    def keep(self, rows: list[int]) -> None:
        """Only these rows stay (finished, failed and cancelled ones leave)."""
        index = torch.tensor(rows, device=self.mask.device, dtype=torch.long)
        self.cache.batch_select_indices(index)
        self.mask, self.position, self.logits = self.mask[index], self.position[index], self.logits[index]
        self.sequences = [self.sequences[i] for i in rows]
        width = int(self.mask.sum(-1).max()) if rows else 0
        if rows and width < self.mask.shape[1] and self.joinable:  # drop columns only padding uses
            self._trim(self.mask.shape[1] - width)

    @torch.inference_mode()
    def step(self, model, tokens: list[int]) -> None:
        """Feed each row its newest token: one forward pass for the whole batch."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        self.position = self.position + 1
        out = model.lm(
            input_ids=torch.tensor(tokens, device=self.mask.device)[:, None],
            attention_mask=self.mask,
            position_ids=self.position,
            use_cache=True,
            **cache_kwargs(self.cache),
        )
        self.cache, self.logits = output_cache(out), out.logits[:, -1]

    def _trim(self, columns: int) -> None:
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., columns:, :], layer.values[..., columns:, :]
        self.mask = self.mask[:, columns:]


def _pad_seq(states: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, width, D), zeros on the left."""
    return F.pad(states, (0, 0, width - states.shape[-2], 0))


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[1], 0))
