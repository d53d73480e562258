"""Poisoned requests for the serving soak: each a (body, Content-Type) that `fovea serve` must answer
with a 4xx in OpenAI's error shape, never a 5xx, while everything else goes on."""

from __future__ import annotations

import base64
import io
import json

from PIL import Image

from serving import chat, png_url


def _image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _truncated_png() -> str:
    data = _png_bytes(Image.effect_noise((64, 64), 40).convert("RGB"))
    return "data:image/png;base64," + base64.b64encode(data[: len(data) // 2]).decode()


def _too_many_pixels() -> str:  # 20000 x 20000 in a few kB: refused from its header
    return "data:image/png;base64," + base64.b64encode(_png_bytes(Image.new("1", (20000, 20000)))).decode()


def _with(**fields) -> tuple[dict, str]:
    return {**chat("Hello."), **fields}, "application/json"


POISON = {
    "nested brackets": lambda: (b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "application/json"),
    "truncated JSON": lambda: (b'{"model": "tiny", "messages": [{"role": "us', "application/json"),
    "a form, not JSON": lambda: (b"model=tiny&messages=hi", "application/x-www-form-urlencoded"),
    "messages a string": lambda: _with(messages="hello"),
    "max_tokens negative": lambda: _with(max_tokens=-5),
    "max_tokens a string": lambda: _with(max_tokens="ten"),
    "max_tokens 1e400": lambda: (json.dumps(chat("Hello.")).replace('"max_tokens": 8', '"max_tokens": 1e400').encode(), "application/json"),
    "temperature a string": lambda: _with(temperature="hot"),
    "unknown model": lambda: _with(model="gpt-9"),
    "role tool": lambda: _with(messages=[{"role": "tool", "content": "x"}]),
    "lone surrogate": lambda: (json.dumps(chat("x")).replace('"x"', '"\\ud800"').encode(), "application/json"),
    "bad base64 image": lambda: _with(messages=[{"role": "user", "content": [_image_part("data:image/png;base64,@@@")]}]),
    "truncated PNG": lambda: _with(messages=[{"role": "user", "content": [_image_part(_truncated_png())]}]),
    "20000x20000 PNG": lambda: _with(messages=[{"role": "user", "content": [_image_part(_too_many_pixels())]}]),
    "nine images": lambda: _with(messages=[{"role": "user", "content": [_image_part(png_url(8, 8))] * 9}]),
    "prompt over the context": lambda: _with(messages=[{"role": "user", "content": "word " * 60_000}]),
}  # fmt: skip
