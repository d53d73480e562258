"""One request's answer as it is decoded: sampling, stop tokens and stop strings, streamed text.

Text is streamed as it forms, except what could still turn out to be the start of a stop string
(held back until it cannot) and half a multi-byte character. A stop string ends the answer before
it, as OpenAI's ``stop`` does.
"""

from __future__ import annotations

import torch


def choose(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    """Greedy when temperature is 0, else nucleus sampling at `temperature`."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p
        keep[0] = True  # the most likely token always stays, however small top_p is
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class Sequence:
    def __init__(self, request, stop_ids: set[int], tokenizer, prompt_tokens: int):
        self.request, self.stop_ids, self.tokenizer = request, stop_ids, tokenizer
        self.prompt_tokens = prompt_tokens
        self.tokens: list[int] = []
        self.sent = ""
        self.text = ""
        self.finish: str | None = None
        self.error: Exception | None = None
        self.generator = torch.Generator().manual_seed(request.seed) if request.seed is not None else None

    def next_token(self, logits: torch.Tensor, greedy: int) -> int:
        r = self.request
        return greedy if r.temperature <= 0 else choose(logits, r.temperature, r.top_p, self.generator)

    def push(self, token: int) -> None:
        if token in self.stop_ids and not self.request.ignore_eos:
            self.finish = "stop"
            return
        self.tokens.append(token)
        self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((i for i in (self.text.find(s) for s in self.request.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.finish = self.text[:cut], "stop"
        elif len(self.tokens) >= self.request.max_tokens:
            self.finish = "length"
        if self.finish is None:
            self._emit(self.text[: len(self.text) - _held_back(self.text, self.request.stop)])

    def flush(self) -> str:
        """Emit whatever was held back and return the whole answer."""
        self._emit(self.text, final=True)
        return self.text

    def _emit(self, upto: str, final: bool = False) -> None:
        if upto.endswith("\ufffd") and not final:  # half a multi-byte character: wait for the rest
            return
        if len(upto) > len(self.sent):
            self.request.emit("text", upto[len(self.sent) :])
            self.sent = upto


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` that might begin a stop string."""
    for k in range(min(len(text), max((len(s) for s in stops), default=1) - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stops):
            return k
    return 0
