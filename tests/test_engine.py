"""The continuous-batching engine: requests join a running batch and leave it at once; greedy
answers equal `model.chat` whatever they were batched with; a poisoned request fails alone; a
cancelled one leaves at the next step; prompts that cannot fit the context are refused."""

from __future__ import annotations

import threading
import time

import pytest

from fovea.errors import ContextLengthError
from fovea.infer.engine import Engine, Request
from fovea.tiny import tiny_vlm

PROMPTS = [
    "Describe it.",
    "What shape?",
    "Count them.",
    "Say red.",
    "Left or right?",
    "Hi.",
    "Go on.",
    "Why?",
]


@pytest.fixture(scope="module")
def model():
    return tiny_vlm()


class Outcome:
    """Collects one request's events."""

    def __init__(self):
        self.pieces, self.result, self.error, self.end = [], None, None, None
        self.done = threading.Event()

    def __call__(self, kind, value):
        if kind == "text":
            self.pieces.append(value)
        else:  # exactly one of done, error, cancelled ends a request
            assert self.end is None, f"{kind} after {self.end}"
            self.end = kind
            self.result, self.error = (value, None) if kind == "done" else (None, value)
            self.done.set()


def _submit(engine, prompt, **options) -> Outcome:
    outcome = Outcome()
    engine.submit(Request([{"role": "user", "content": prompt}], emit=outcome, **options))
    return outcome


def _expected(model, prompt, max_tokens):
    return model.chat([{"role": "user", "content": prompt}], max_new_tokens=max_tokens)


def test_staggered_arrivals_join_the_running_batch_and_equal_model_chat(model):
    engine = Engine(model, max_batch=8, max_wait=0.0)
    sizes = []
    original = engine._sample
    engine._sample = lambda: sizes.append(len(engine.running.sequences)) or original()
    long = _submit(engine, "Talk.", max_tokens=120, ignore_eos=True)
    while not long.pieces:
        time.sleep(0.005)
    short = [_submit(engine, p, max_tokens=8) for p in PROMPTS[:3]]
    for outcome in short:
        assert outcome.done.wait(60)
    assert not long.done.is_set()  # the short ones did not wait for the long one
    assert long.done.wait(120)
    engine.close()
    assert max(sizes) == 4 and sizes[0] == 1 and sizes[-1] == 1  # joined mid-flight, left at once
    for prompt, outcome in zip(PROMPTS, short):
        assert outcome.result.text.strip() == _expected(model, prompt, 8)
    assert long.result.completion_tokens == 120


@pytest.mark.parametrize(
    "poison",
    [{"temperature": 1e-300}, {"seed": 2**64}, {"prompt": "broken \ud800 text"}, {"template": "nope"}],
    ids=["tiny-temperature", "seed-overflow", "lone-surrogate", "unknown-template"],
)
def test_a_poisoned_request_fails_alone(model, poison):
    engine = Engine(model, max_batch=8, max_wait=0.05)
    poison = dict(poison)
    bad = _submit(engine, poison.pop("prompt", "Describe it."), max_tokens=6, **poison)
    good = [_submit(engine, p, max_tokens=6) for p in PROMPTS[:7]]
    for outcome in [bad, *good]:
        assert outcome.done.wait(60)
    engine.close()
    assert bad.error is not None and bad.result is None
    for prompt, outcome in zip(PROMPTS, good):
        assert outcome.error is None and outcome.result.text.strip() == _expected(model, prompt, 6)


def test_a_cancelled_request_leaves_at_the_next_step(model):
    engine = Engine(model, max_batch=8, max_wait=0.0)
    outcome = Outcome()
    request = Request([{"role": "user", "content": "Talk."}], max_tokens=500, ignore_eos=True, emit=outcome)
    engine.submit(request)
    while len(outcome.pieces) < 3:
        time.sleep(0.005)
    request.cancelled.set()
    deadline = time.monotonic() + 10
    while engine.running is not None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.running is None and outcome.end == "cancelled"  # gone, never finished
    assert len(outcome.pieces) < 100
    after = _submit(engine, "Hi.", max_tokens=4)
    assert after.done.wait(30) and after.result.text.strip() == _expected(model, "Hi.", 4)
    engine.close()


def test_prompts_that_cannot_fit_the_context_are_refused(model):
    engine = Engine(model, max_batch=4)
    huge = _submit(engine, "word " * 200_000, max_tokens=4)  # refused by its size, before tokenising
    over = _submit(engine, "Hi.", max_tokens=engine.context)
    fine = _submit(engine, "Hi.", max_tokens=4)
    for outcome in (huge, over, fine):
        assert outcome.done.wait(30)
    engine.close()
    assert isinstance(huge.error, ContextLengthError) and "at least" in str(huge.error)
    assert isinstance(over.error, ContextLengthError) and f"context of {engine.context}" in str(over.error)
    assert fine.result is not None


def test_stop_strings_end_the_answer_before_them(model):
    full = _expected(model, "Describe it.", 12)
    cut = full[len(full) // 2 :][:3]
    engine = Engine(model)
    outcome = _submit(engine, "Describe it.", max_tokens=12, stop=(cut,))
    assert outcome.done.wait(30)
    engine.close()
    assert outcome.result.finish_reason == "stop"
    assert outcome.result.text.strip() == full[: full.index(cut)].strip()  # model.chat strips too
    assert "".join(outcome.pieces) == outcome.result.text  # nothing of the stop string was streamed
