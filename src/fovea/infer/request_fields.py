"""The fields of an OpenAI chat request other than its messages, checked before it is queued.

An allow-list: a field fovea does not implement (``logprobs``, ``tools``, ``response_format``,
penalties …) is a 400 naming it, because answering without it would silently give the client
something other than what it asked for. Types are strict — JSON ``true`` is not the number 1 —
since a request that passes here must not fail later inside the engine, where it would take the
rest of its batch down with it. ``null`` means "not given", as in OpenAI's schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .requests import ApiError, Limits, is_unicode

KNOWN_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "seed",
        "stream",
        "stream_options",
        "stop",
        "n",
        "user",
        "fovea_masks",
    }
)
"""OpenAI's fields fovea implements, and one extension of its own: ``fovea_masks: true`` asks a
segmenting model (MLCD-Seg) for a mask per ``[SEG]`` of its answer, returned as COCO RLE in the
message's ``fovea_masks`` (clients that do not ask never see it)."""

NEUTRAL = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (False,),
    "tools": ([],),
    "parallel_tool_calls": (False, True),
    "response_format": ({"type": "text"},),
    "logit_bias": ({},),
}
"""Unsupported fields that clients often send with a value asking for nothing: accepted only with
that value (or null). Any other value of theirs is a 400, never silently ignored."""

GREEDY_BELOW = 1e-5
"""A temperature or top_p below this picks the most likely token, i.e. decodes greedily. Sampling
would break there: logits divided by 1e-300 overflow to inf (softmax: NaN), and a top_p of 1e-300
is 0 in float32 and keeps no token — either fails the whole batch. Long before that the
distribution is one-hot anyway, so greedy is the same answer."""

MAX_STOPS = 4  # OpenAI's limit


@dataclass
class Options:
    sampling: dict
    """`Request` keyword arguments: max_tokens, temperature, top_p, seed, stop."""
    stream: bool = False
    include_usage: bool = False
    """stream_options.include_usage: a last chunk carries the token counts."""
    masks: bool = False
    """fovea_masks: the answer's [SEG]s segmented, as RLE in the (non-streamed) message."""


def request_options(body: dict, limits: Limits) -> Options:
    """Every field of `body` but messages and model, checked; raises ApiError naming the field."""
    for name, value in body.items():
        if name in NEUTRAL and (value is None or any(_same(value, v) for v in NEUTRAL[name])):
            continue
        if name not in KNOWN_FIELDS:
            name = name if len(name) <= 60 else name[:57] + "..."  # a key can be a megabyte long
            raise ApiError(
                400,
                f"unsupported field {name!r}: fovea serve does not implement it "
                f"(it accepts {', '.join(sorted(KNOWN_FIELDS))})",
                name,
                "unsupported_field",
            )
    n = body.get("n")
    if n is not None and (_kind(n) != "integer" or n != 1):
        raise ApiError(
            400,
            f"n must be 1: fovea serve returns one choice per request (n > 1 is not supported), got {_found(n)}",
            "n",
        )
    # user: accepted and ignored, as OpenAI allows (it tags requests for abuse monitoring)
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise ApiError(400, f"user must be a string, got {_found(body['user'])}", "user")
    stream, include_usage = _stream(body)
    masks = body.get("fovea_masks")
    if masks is not None and not isinstance(masks, bool):
        raise ApiError(400, f"fovea_masks must be true or false, got {_found(masks)}", "fovea_masks")
    if masks and stream:
        raise ApiError(400, "fovea_masks comes with a whole answer: set stream to false", "fovea_masks")
    return Options(sampling(body, limits), stream, include_usage, bool(masks))


def sampling(body: dict, limits: Limits) -> dict:
    """max_tokens, temperature, top_p, seed and stop, checked (see GREEDY_BELOW)."""
    temperature = _number(body, "temperature", 1.0, "between 0 and 2", lambda t: 0 <= t <= 2)
    top_p = _number(body, "top_p", 1.0, "in (0, 1]", lambda p: 0 < p <= 1)
    seed = body.get("seed")
    if seed is not None and (_kind(seed) != "integer" or not 0 <= seed <= 2**63 - 1):
        # torch's generator takes 64 bits: a larger seed would fail inside the engine's batch
        raise ApiError(400, f"seed must be an integer from 0 to 2**63-1, got {_found(seed)}", "seed")
    return {
        "max_tokens": _max_tokens(body, limits),
        "temperature": 0.0 if temperature < GREEDY_BELOW or top_p < GREEDY_BELOW else temperature,
        "top_p": top_p,
        "seed": seed,
        "stop": _stop(body.get("stop")),
    }


def _max_tokens(body: dict, limits: Limits) -> int | None:
    """max_completion_tokens is OpenAI's new name for max_tokens; both may come, if they agree.
    Neither: None, which the engine reads as what the context leaves after the prompt (capped)."""
    given = {}
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if _kind(value) != "integer" or not 1 <= value <= limits.max_tokens:
            raise ApiError(
                400, f"{name} must be an integer from 1 to {limits.max_tokens}, got {_found(value)}", name
            )
        given[name] = value
    if len(set(given.values())) > 1:
        raise ApiError(400, "max_tokens and max_completion_tokens differ: give one", "max_completion_tokens")
    return next(iter(given.values()), None)


def _number(body: dict, name: str, default: float, expected: str, fits) -> float:
    value = body.get(name)
    if value is None:
        return default
    # NaN and ±Infinity, which Python's json reads, fail every range check
    if _kind(value) not in ("integer", "number") or not fits(value):
        raise ApiError(400, f"{name} must be a number {expected}, got {_found(value)}", name)
    return float(value)


def _stop(value: object) -> tuple[str, ...]:
    """A string or a list of up to four non-empty strings -> the engine's tuple."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOPS:
        raise ApiError(
            400, f"stop must be a string or a list of up to {MAX_STOPS} strings, got {_found(value)}", "stop"
        )
    for stop in stops:
        if not isinstance(stop, str) or not stop or not is_unicode(stop):
            raise ApiError(400, f"stop sequences must be non-empty text, got {_found(stop)}", "stop")
    return tuple(stops)


def _stream(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage), as OpenAI checks them: stream_options only with stream true."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {_found(stream)}", "stream")
    options = body.get("stream_options")
    if options is None:
        return bool(stream), False
    if not stream:
        raise ApiError(400, "stream_options is only allowed when stream is true", "stream_options")
    usage = options.get("include_usage", False) if isinstance(options, dict) else None
    if not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(usage, bool):
        raise ApiError(
            400,
            f'stream_options must be {{"include_usage": true|false}}, got {_found(options)}',
            "stream_options",
        )
    return True, usage


def _kind(value: object) -> str:
    """The JSON type of a decoded value (bool is not an integer here, unlike in Python)."""
    if isinstance(value, bool):
        return "boolean"
    for kind, types in (("integer", int), ("number", float), ("string", str), ("array", list)):
        if isinstance(value, types):
            return kind
    return "object" if isinstance(value, dict) else "null"


def _found(value: object) -> str:
    """What the client sent, short, as JSON (so `true` and `"1"` read as they were written)."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _same(value: object, neutral: object) -> bool:
    """Equal in JSON terms: `false` is not `0` here (bool is an int in Python)."""
    return type(value) is type(neutral) and value == neutral
