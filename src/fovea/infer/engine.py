"""A batching generation engine: concurrent requests share one prefill and one decode loop.

Requests queue up; a worker thread takes up to `max_batch` of them (waiting `max_wait` seconds
for company after the first), left-pads them into one batch, runs the prefill once (all images
through the tower together), then decodes every sequence step by step with the LM's KV cache —
one forward pass per step for the whole batch, one new token per sequence. Each request has its
own sampling settings, stop tokens and token budget, and receives its text as it is produced.
Position ids follow the attention mask, as transformers' generate does with left padding, so
greedy output equals `model.generate` on the same input.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import FoveaError
from ..model.kv_cache import cache_kwargs, output_cache

logger = logging.getLogger(__name__)


@dataclass
class Request:
    messages: list[dict]
    images: list = field(default_factory=list)
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    template: str | None = "default"
    ignore_eos: bool = False
    """Decode exactly max_tokens tokens (for benchmarks)."""
    stop: tuple[str, ...] = ()
    """Stop strings: the answer ends before the first one appears (it is not part of the text)."""
    emit: Callable[[str, object], None] = lambda kind, value: None
    """Receives ("text", str) pieces, then ("done", Result) or ("error", exception)."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set it (the server does when its client goes away) and the sequence leaves at the next step."""


@dataclass
class Result:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


class _Sequence:
    def __init__(self, request: Request, stops: set[int], tokenizer):
        self.request, self.stops, self.tokenizer = request, stops, tokenizer
        self.tokens: list[int] = []
        self.sent = ""
        self.finish: str | None = None
        self.generator = torch.Generator().manual_seed(request.seed) if request.seed is not None else None

    def push(self, token: int) -> None:
        if token in self.stops:
            self.finish = "stop"
            return
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # hold back half a multi-byte character
            self.request.emit("text", text[len(self.sent) :])
            self.sent = text
        if len(self.tokens) >= self.request.max_tokens:
            self.finish = "length"

    def flush(self) -> str:
        """Emit whatever was held back (an unfinished character at the very end) and return all text."""
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text != self.sent:
            self.request.emit("text", text[len(self.sent) :])
            self.sent = text
        return text


def choose(logits: torch.Tensor, temperature: float, top_p: float, generator) -> int:
    """Greedy when temperature is 0, else nucleus sampling at `temperature`."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class Engine:
    def __init__(self, model, max_batch: int = 16, max_wait: float = 0.01):
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait
        self.queue: queue.Queue[Request] = queue.Queue()
        self.trace: list[float] | None = None
        """Set to a list to record the time of every token step (benchmarks)."""
        self.busy = threading.Event()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._loop, name="fovea-engine", daemon=True)
        self._worker.start()

    def submit(self, request: Request) -> None:
        self.queue.put(request)

    def close(self, timeout: float = 60.0) -> None:
        """Finish what is queued and running, then stop the worker."""
        deadline = time.monotonic() + timeout
        while (not self.queue.empty() or self.busy.is_set()) and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        self._worker.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self.busy.set()
            batch, deadline = [first], time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            try:
                self._run(batch)
            except Exception as err:  # a bug must not kill the server: fail these requests loudly
                logger.exception("generation failed")
                for request in batch:
                    request.emit("error", err)
            finally:
                self.busy.clear()

    @torch.inference_mode()
    def _run(self, batch: list[Request]) -> None:
        model = self.model
        ready, prepared = [], []
        for request in batch:
            try:
                prepared.append(model.prepare_chat(request.messages, request.images, request.template))
                ready.append(request)
            except (FoveaError, FileNotFoundError) as err:
                request.emit("error", err)
        if not ready:
            return
        rows = [p["input_ids"][0][p["attention_mask"][0].bool()].tolist() for p in prepared]
        ids, mask = model._pad_left(rows)
        pixels = [p["pixel_values"] for p in prepared if p["pixel_values"] is not None]
        layouts = [layout for p in prepared for layout in (p["image_layouts"] or [])]
        device = model.device
        ids, mask = ids.to(device), mask.to(device)
        embeds = model.embed(ids, torch.cat(pixels) if pixels else None, layouts or None)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model.lm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
        )
        sequences = [_Sequence(r, set(model.stop_token_ids(r.template)), model.tokenizer) for r in ready]
        self._decode(sequences, out, mask, positions[:, -1:], [len(r) for r in rows])

    def _decode(self, sequences: list[_Sequence], out, mask, position, prompt_lengths) -> None:
        model, pad = self.model, self.model.tokenizer.pad_token_id or 0
        while True:
            logits = out.logits[:, -1]
            greedy = logits.argmax(-1).tolist()  # one op for every greedy row of the batch
            step = []
            for i, seq in enumerate(sequences):
                token = pad
                if seq.finish is None:
                    r = seq.request
                    token = (
                        greedy[i]
                        if r.temperature <= 0
                        else choose(logits[i], r.temperature, r.top_p, seq.generator)
                    )
                    seq.push(token)
                step.append(token)
            if self.trace is not None:
                self.trace.append(time.perf_counter())
            if all(seq.finish is not None for seq in sequences):
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            position = position + 1
            tokens = torch.tensor(step, device=mask.device)[:, None]
            out = model.lm(
                input_ids=tokens,
                attention_mask=mask,
                position_ids=position,
                use_cache=True,
                **cache_kwargs(output_cache(out)),
            )
        for seq, prompt in zip(sequences, prompt_lengths):
            seq.request.emit("done", Result(seq.flush(), prompt, len(seq.tokens), seq.finish))
