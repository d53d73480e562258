"""fovea's one decoder: sampling, stops, streamed text and the batched KV-cache step.

The model computes logits and never decodes (nanochat's split); everything that turns logits into
text is here, and every caller uses it: ``model.generate`` and ``model.chat``, the chat session,
the serving engine, ``fovea eval`` and the lmms-eval model. So one seed and one temperature give
the same text through each of them.

- `Sampling`: a request's settings (greedy when ``temperature`` is 0; nucleus ``top_p``, ``top_k``;
  ``seed``; stop strings; token budget; logprobs).
- `Sequence`: one answer as it is decoded: its own generator, stop ids and strings, text streamed as
  it forms (a possible stop string and half a multi-byte character held back), logprobs.
- `RunningBatch`: left-padded rows sharing one KV cache; prefill, one-token steps, several-token
  extensions (the chat session's new turn), rows joining and leaving.
- `sample_all` chooses every row's next token; `decode` runs a batch to its end.

    cache per layer: keys/values (B, H, T, D)   mask: (B, T)   position: (B, 1)   logits: (B, V)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Sampling:
    """How one answer is decoded."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    """0: greedy (argmax); above 0: sampled at this temperature."""
    top_p: float = 1.0
    top_k: int = 0
    """Keep only the k most likely tokens before sampling (0: all)."""
    seed: int | None = None
    """Seeds this answer's own generator: the same seed gives the same text on every path."""
    stop: tuple[str, ...] = ()
    """Stop strings: the answer ends before the first one (it is not part of the text)."""
    ignore_eos: bool = False
    """Decode exactly max_new_tokens tokens (benchmarks)."""
    logprobs: bool = False
    """Record each chosen token's log-probability (under the unscaled distribution)."""

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token from one row's logits (V,): argmax when greedy, else top-k, then nucleus
    (the most likely token always stays), then a draw at `temperature` from `generator`."""
    if sampling.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if 0 < sampling.top_k < probs.shape[-1]:
        kth = probs.topk(sampling.top_k).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < sampling.top_p * sorted_probs.sum()
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class Result:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    """"stop" (a stop id or string) or "length" (the token budget)."""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    masks: list | None = None
    """A segmenting model's masks for the answer's [SEG]s, when asked (the server's ``fovea_masks``):
    per image, (k, H, W) mask logits (`fovea.seg.model.answer_masks`)."""


class Sequence:
    """One answer being decoded; `emit` receives each new piece of text as it forms."""

    def __init__(
        self,
        sampling: Sampling,
        stop_ids: set[int],
        tokenizer,
        prompt_tokens: int,
        emit: Callable[[str], None] = lambda piece: None,
    ):
        self.sampling, self.stop_ids, self.tokenizer = sampling, stop_ids, tokenizer
        self.prompt_tokens, self.emit = prompt_tokens, emit
        self.tokens: list[int] = []
        self.logprobs: list[float] | None = [] if sampling.logprobs else None
        self.sent = self.text = ""
        self.finish: str | None = None
        self.error: Exception | None = None
        self.owner: object = None
        """Whatever the caller decodes this answer for (the serving engine: its `Request`)."""
        self.generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None

    def next_token(self, logits: torch.Tensor, greedy: int) -> int:
        """This row's choice (`greedy`: the batch's argmax for this row, computed once for all)."""
        token = greedy if self.sampling.greedy else choose(logits, self.sampling, self.generator)
        if self.logprobs is not None:
            self.logprobs.append(float(torch.log_softmax(logits.float(), -1)[token]))
        return token

    def push(self, token: int) -> None:
        if token in self.stop_ids and not self.sampling.ignore_eos:
            self.finish = "stop"
            return
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for i in (self.text.find(s) for s in self.sampling.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.finish = self.text[:cut], "stop"
        elif len(self.tokens) >= self.sampling.max_new_tokens:
            self.finish = "length"
        if self.finish is None:
            self._emit(self.text[: len(self.text) - _held_back(self.text, self.sampling.stop)])

    def result(self) -> Result:
        """Emit whatever was held back; the whole answer."""
        self._emit(self.text, final=True)
        finish = self.finish or "length"
        return Result(self.text, self.prompt_tokens, len(self.tokens), finish, self.tokens, self.logprobs)

    def _emit(self, upto: str, final: bool = False) -> None:
        if upto.endswith("\ufffd") and not final:  # half a multi-byte character: wait for the rest
            return
        if len(upto) > len(self.sent):
            self.emit(upto[len(self.sent) :])
            self.sent = upto


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that might begin a stop string."""
    for k in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stops):
            return k
    return 0
