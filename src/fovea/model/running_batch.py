"""The rows being decoded together: their sequences, one KV cache, the mask and the positions.

Rows are left-padded: a newcomer's prefill is a batch of its own, then joins the running one by
padding the shorter of the two caches (and attention masks) on the left, so every row's newest
token sits in the last column. Padded positions are masked out and position ids count only real
tokens (as transformers' generate does with left padding), so a row decodes exactly as it would
alone. Finished rows leave through the cache's own ``batch_select_indices``. A one-row batch can
also be cut back to a prefix and extended by several tokens: the chat session's next turn.

    cache per layer: keys/values (B, H, T, D)   mask: (B, T)   position: (B, 1)   logits: (B, V)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from .decoding import Result, Sequence
from .inputs import ModelInputs
from .kv_cache import cache_kwargs, output_cache


class RunningBatch:
    def __init__(self, sequences: list[Sequence], cache, mask, position, logits):
        self.sequences, self.cache, self.mask = sequences, cache, mask
        self.position, self.logits = position, logits

    @classmethod
    @torch.inference_mode()
    def prefill(cls, model, sequences: list[Sequence], prepared: list[dict]) -> RunningBatch:
        """One forward pass over the newcomers' prompts (all their images through the tower)."""
        rows = [p["input_ids"][0][p["attention_mask"][0].bool()].tolist() for p in prepared]
        ids, mask = model._pad_left(rows)
        ids, mask = ids.to(model.device), mask.to(model.device)
        embeds = model.embed_inputs(ModelInputs.join(prepared, ids, mask))
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

    @property
    def length(self) -> int:
        """Columns of the cache (a one-row batch: the tokens it has seen)."""
        return self.mask.shape[1]

    def join(self, other: RunningBatch) -> None:
        """Append `other`'s rows, left-padding whichever batch is shorter."""
        width = max(self.length, other.length)
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
        if rows and width < self.length and self.joinable:  # drop columns only padding uses
            self._trim(self.length - width)

    @torch.inference_mode()
    def step(self, model, tokens: list[int]) -> None:
        """Feed each row its newest token: one forward pass for the whole batch."""
        self.extend(model, torch.tensor(tokens, device=self.mask.device)[:, None])

    @torch.inference_mode()
    def extend(self, model, ids: torch.Tensor) -> None:
        """Feed every row the tokens `ids` (B, N); the logits become those after the last one."""
        n = ids.shape[1]
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], n)], dim=1)
        positions = self.position + torch.arange(1, n + 1, device=self.position.device)
        out = model.lm(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **cache_kwargs(self.cache),
        )
        self.cache, self.logits, self.position = output_cache(out), out.logits[:, -1], positions[:, -1:]

    def crop(self, length: int) -> None:
        """A one-row batch cut back to its first `length` tokens (it has no padding)."""
        if self.length > length:
            self.cache.crop(length - self.length)  # transformers 5: a negative count removes that many
        self.mask, self.position = self.mask[:, :length], self.position.new_full((1, 1), length - 1)

    def _trim(self, columns: int) -> None:
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., columns:, :], layer.values[..., columns:, :]
        self.mask = self.mask[:, columns:]


def sample_all(batch: RunningBatch) -> dict[int, int]:
    """Every row's next token, by id of its sequence: each chooses with its own settings and takes
    it (stops, text). A row whose choice fails is marked failed; the others go on."""
    chosen = {}
    greedy = batch.logits.argmax(-1).tolist()  # one op for every greedy row of the batch
    for i, seq in enumerate(batch.sequences):
        try:
            token = seq.next_token(batch.logits[i], greedy[i])
            seq.push(token)
            chosen[id(seq)] = token
        except Exception as err:  # noqa: BLE001 - this row's own failure, reported with it
            seq.finish, seq.error = "error", err
    return chosen


def decode(model, batch: RunningBatch) -> Iterator[None]:
    """Run `batch` to its end; yields after each step (streaming callers read their sequences'
    `emit` in between). Finished rows leave as they finish."""
    while batch.sequences:
        tokens = sample_all(batch)
        for seq in batch.sequences:
            if seq.error is not None:
                raise seq.error
        running = [i for i, seq in enumerate(batch.sequences) if seq.finish is None]
        yield
        if len(running) < len(batch.sequences):
            batch.keep(running)
        if batch.sequences:
            batch.step(model, [tokens[id(seq)] for seq in batch.sequences])


def run_to_end(model, prepared: list[dict], sequences: list[Sequence]) -> list[Result]:
    """Decode each prompt in `prepared` (one `prepare`/`prepare_chat` output each) to its end."""
    batch = RunningBatch.prefill(model, list(sequences), prepared)
    for _ in decode(model, batch):
        pass
    return [seq.result() for seq in sequences]


def _pad_seq(states: torch.Tensor, width: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, width, D), zeros on the left."""
    return F.pad(states, (0, 0, width - states.shape[-2], 0))


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(mask, (width - mask.shape[1], 0))
