"""A continuous-batching generation engine: requests join and leave the running batch at every step.

One worker thread runs the scheduler. Each turn of its loop:

1. **admit**: requests waiting in the queue are checked (template, images, tag counts, prompt plus
   ``max_tokens`` within the model's context) and prefilled together, then join the running
   batch (`RunningBatch.join`); a request that fails any of this fails alone;
2. **sample**: every running sequence takes its next token from its own logits, with its own
   sampling settings, stop tokens, stop strings and token budget, and streams its text;
3. **retire**: finished, failed and cancelled sequences leave at once;
4. **step**: one forward pass feeds every remaining sequence its new token (the LM's KV cache).

A short request arriving while a long one decodes starts at the next step instead of waiting for
it. Position ids follow the attention mask, as transformers' generate does with left padding, so
greedy output equals `model.chat` on the same input whatever a request is batched with.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import ContextLengthError
from ..model.decoding import Result, Sampling
from ..model.running_batch import RunningBatch, sample_all

__all__ = ["Engine", "Request", "Result"]

logger = logging.getLogger(__name__)


@dataclass
class Request:
    messages: list[dict]
    images: list = field(default_factory=list)
    max_tokens: int | None = None
    """None: what the context leaves after the prompt, capped by the engine's `default_max_tokens`."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    logprobs: bool = False
    template: str | None = "default"
    ignore_eos: bool = False
    """Decode exactly max_tokens tokens (for benchmarks)."""
    stop: tuple[str, ...] = ()
    """Stop strings: the answer ends before the first one appears (it is not part of the text)."""
    emit: Callable[[str, object], None] = lambda kind, value: None
    """Receives ("text", str) pieces, then ("done", Result), ("error", exception) or, once
    `cancelled` is set, ("cancelled", None): exactly one of the three ends every request."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set it (the server does when its client goes away) and the sequence leaves at the next step."""
    sam_images: list | None = None
    """SAM's views of `images` when the client asked for masks (a segmenting model): the answer's
    [SEG]s are then segmented before ``done``, whose Result carries them (``masks``)."""
    submitted: float = 0.0
    started: float | None = None
    """`time.monotonic()` when the request was queued and when its prefill ended (queue time)."""

    @property
    def sampling(self) -> Sampling:
        return Sampling(
            max_new_tokens=self.max_tokens or 1,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=tuple(self.stop),
            ignore_eos=self.ignore_eos,
            logprobs=self.logprobs,
        )


@dataclass(frozen=True)
class Load:
    """What the engine holds, as of its last turn (read by /metrics from other threads)."""

    running: int = 0
    kv_tokens: int = 0
    """Tokens in the KV cache (left padding not counted)."""
    kv_bytes: int = 0
    """Bytes of KV cache allocated, padding included."""


class Engine:
    def __init__(
        self,
        model,
        max_batch: int = 16,
        max_wait: float = 0.01,
        continuous: bool = True,
        default_max_tokens: int = 1024,
    ):
        """`continuous=False` is static batching (a batch decodes to its end before the next one
        starts): kept for comparison in benchmarks/serve_scheduling.py. `default_max_tokens` caps
        the answer of a request that gives no max_tokens (it gets what the context leaves)."""
        self.model, self.max_batch, self.max_wait, self.continuous = model, max_batch, max_wait, continuous
        self.default_max_tokens = default_max_tokens
        self.queue: queue.Queue[Request] = queue.Queue()
        self.trace: list[float] | None = None
        """Set to a list to record the time of every token step (benchmarks)."""
        self.busy = threading.Event()
        self.running: RunningBatch | None = None
        self.context = _context_length(model)
        self._token_bytes = max((len(t.encode()) for t in model.tokenizer.get_vocab()), default=1)
        self._stop = threading.Event()
        self.refusal: Exception | None = None
        """Set by `drain`: what a request submitted from then on is answered with."""
        self._abort: Exception | None = None
        self.load = Load()
        self._kv_bytes_per_slot = _kv_bytes_per_slot(model)
        self._worker = threading.Thread(target=self._loop, name="fovea-engine", daemon=True)
        self._worker.start()

    def submit(self, request: Request) -> None:
        request.submitted = time.monotonic()
        if self.refusal is not None:  # draining: no new work
            request.emit("error", self.refusal)
            return
        self.queue.put(request)

    def drain(self, refusal: Exception) -> None:
        """Accept nothing new (each new request is answered with `refusal`); what runs goes on."""
        self.refusal = refusal

    def abort(self, err: Exception) -> None:
        """End every queued and running request with `err` at the worker's next turn (no step
        after it), e.g. when a drain runs out of time."""
        self.refusal = self.refusal or err
        self._abort = err

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
                self._turn()
            except Exception as err:  # a bug must not kill the server: fail what was running, loudly
                logger.exception("generation failed")
                for seq in self.running.sequences if self.running else []:
                    seq.owner.emit("error", err)
                self.running = None
            self._measure()
            if self.running is None and self.queue.empty():
                self.busy.clear()

    def _measure(self) -> None:
        batch = self.running
        if batch is None:
            self.load = Load()
            return
        slots = batch.mask.numel()
        tokens = int(batch.mask.sum())
        self.load = Load(len(batch.sequences), tokens, slots * self._kv_bytes_per_slot)

    def _turn(self) -> None:
        if self._abort is not None:
            self._fail_all(self._abort)
            return
        self._admit()
        if self.running is None:
            return
        tokens = self._sample()
        self._retire()
        if self.running is not None:
            self.running.step(self.model, [tokens[id(seq)] for seq in self.running.sequences])

    def _fail_all(self, err: Exception) -> None:
        for seq in self.running.sequences if self.running else []:
            seq.owner.emit("error", err)
        self.running = None
        while True:
            try:
                self.queue.get_nowait().emit("error", err)
            except queue.Empty:
                break
        time.sleep(0.01)  # nothing left to decode: idle until stopped

    # -- admit -------------------------------------------------------------------------------

    def _admit(self) -> None:
        """Waiting requests join the batch (the worker idles on the queue when nothing runs)."""
        room = self.max_batch - (len(self.running.sequences) if self.running else 0)
        if room <= 0 or (self.running is not None and not (self.continuous and self.running.joinable)):
            return
        newcomers = self._take(room, wait=self.running is None)
        ready = [(r, *p) for r in newcomers if (p := self._prepare(r)) is not None]
        if not ready:
            return
        for group in _prefill_groups(self.model, ready):
            now = time.monotonic()
            for seq in group.sequences:
                seq.owner.started = now
            if self.running is None:
                self.running = group
            else:
                self.running.join(group)

    def _take(self, room: int, wait: bool) -> list[Request]:
        taken: list[Request] = []
        try:
            if wait:
                taken.append(self.queue.get(timeout=0.1))
                self.busy.set()
                deadline = time.monotonic() + self.max_wait  # a moment for company
                while len(taken) < room:
                    taken.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
            while len(taken) < room:
                taken.append(self.queue.get_nowait())
        except queue.Empty:
            pass
        for request in taken:
            if request.cancelled.is_set():
                request.emit("cancelled", None)
        return [r for r in taken if not r.cancelled.is_set()]

    def _prepare(self, request: Request) -> tuple | None:
        """(model inputs, the sequence to decode) for `request`, or None after telling it why not
        (it alone fails)."""
        try:
            self._check_length(request)
            prepared = self.model.prepare_chat(request.messages, request.images, request.template)
            length = int(prepared["attention_mask"].sum())
            if request.max_tokens is None:  # what the context leaves, as vLLM does (capped)
                request.max_tokens = min(self.context - length, self.default_max_tokens)
                if request.max_tokens < 1:
                    raise ContextLengthError(
                        f"the prompt is {length} tokens: it fills the model's context of {self.context}"
                    )
            if length + request.max_tokens > self.context:
                raise ContextLengthError(
                    f"the prompt is {length} tokens and max_tokens is {request.max_tokens}: "
                    f"{length + request.max_tokens} over the model's context of {self.context}"
                )
            emit = lambda piece, r=request: r.emit("text", piece)  # noqa: E731
            sequence = self.model.sequence(prepared, request.sampling, request.template, emit)
            sequence.owner = request
            sequence.prepared = prepared if request.sam_images is not None else None  # for its masks
            return prepared, sequence
        except Exception as err:  # tokenising, images, templates, seeds: this request's own error
            request.emit("error", err)
            return None

    def _check_length(self, request: Request) -> None:
        """Refuse a prompt that cannot fit before tokenising it: a token is at most the longest
        vocabulary entry in bytes, so the bytes bound the token count from below."""
        size = sum(len(m["content"].encode("utf-8", "replace")) for m in request.messages)
        if size // self._token_bytes + (request.max_tokens or 1) > self.context:
            raise ContextLengthError(
                f"the prompt is at least {size // self._token_bytes} tokens ({size} bytes) and max_tokens "
                f"is {request.max_tokens}: over the model's context of {self.context}"
            )

    # -- sample / retire ---------------------------------------------------------------------

    def _sample(self) -> dict[int, int]:
        """Each sequence's next token (by id of the sequence); a failure fails that one alone."""
        chosen = sample_all(self.running)
        if self.trace is not None:
            self.trace.append(time.perf_counter())
        return chosen

    def _retire(self) -> None:
        batch, keep = self.running, []
        for i, seq in enumerate(batch.sequences):
            request = seq.owner
            if seq.finish == "error":
                request.emit("error", seq.error)
            elif request.cancelled.is_set():
                seq.finish = "cancelled"
                request.emit("cancelled", None)
            elif seq.finish is not None:
                self._done(request, seq)
            else:
                keep.append(i)
        if not keep:
            self.running = None
        elif len(keep) < len(batch.sequences):
            batch.keep(keep)

    def _done(self, request: Request, seq) -> None:
        """``done`` with the answer (and, when asked, its masks: one teacher-forced pass of prompt +
        answer, in this thread; a failure there fails this request alone)."""
        result = seq.result()
        if request.sam_images is not None:
            from ..seg.model import answer_masks

            try:
                answer = [t for t in result.tokens if t not in seq.stop_ids]
                result.masks = answer_masks(self.model, seq.prepared, answer, request.sam_images)
            except Exception as err:
                logger.exception("segmenting an answer failed")
                request.emit("error", err)
                return
        request.emit("done", result)


def _prefill_groups(model, ready: list[tuple]) -> list[RunningBatch]:
    """Prefill the newcomers (request, inputs, sequence) together; if that fails, one by one, so
    only the culprit fails."""
    sequences = [seq for _, _, seq in ready]
    try:
        return [RunningBatch.prefill(model, sequences, [p for _, p, _ in ready])]
    except Exception as err:
        if len(ready) == 1:
            ready[0][0].emit("error", err)
            return []
    groups = []
    for request, prepared, seq in ready:
        try:
            groups.append(RunningBatch.prefill(model, [seq], [prepared]))
        except Exception as err:
            request.emit("error", err)
    return groups


def _kv_bytes_per_slot(model) -> int:
    """Bytes one token takes in the LM's KV cache: keys and values, every layer, every KV head."""
    config = model.lm.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    size = next(model.lm.parameters()).element_size()
    return 2 * config.num_hidden_layers * heads * head_dim * size


def _context_length(model) -> int:
    """Tokens a sequence may hold: the model's max_length, else its LM's position limit."""
    limit = model.config.max_length or getattr(model.lm.config, "max_position_embeddings", None)
    return int(limit) if limit else 1 << 30
