"""Turning an OpenAI chat request into fovea messages and images — and every way it can be wrong.

Errors are `ApiError`s carrying the HTTP status and OpenAI's error body
(``{"error": {"message", "type", "param", "code"}}``), so the server answers every bad request
with the right 4xx and keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError
from ..imaging.io import load_image


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    max_images: int = 8
    max_pixels: int = 16_000_000
    max_tokens: int = 1024
    max_image_bytes: int = 20 * 1024 * 1024
    allow_remote_images: bool = False
    image_dir: Path | None = None


def parse_messages(raw: object, limits: Limits) -> tuple[list[dict], list]:
    """OpenAI messages -> (fovea messages with <image> tags, decoded images in order)."""
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    messages, images = [], []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ApiError(
                400, f"messages[{i}] needs a role of system, user or assistant", f"messages[{i}].role"
            )
        content = message.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "".join(
                _part(part, f"messages[{i}].content[{j}]", images, limits) for j, part in enumerate(content)
            )
        else:
            raise ApiError(
                400, f"messages[{i}].content must be text or a list of parts", f"messages[{i}].content"
            )
        messages.append({"role": message["role"], "content": text})
    return messages, images


def _part(part: object, where: str, images: list, limits: Limits) -> str:
    if not isinstance(part, dict):
        raise ApiError(400, f"{where} must be an object", where)
    if part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    if part.get("type") == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise ApiError(400, f"{where}.image_url.url must be a string", where)
        if len(images) >= limits.max_images:
            raise ApiError(
                400, f"too many images: at most {limits.max_images} per request", where, "too_many_images"
            )
        images.append(_image(url, where, limits))
        return "<image>\n"
    raise ApiError(400, f"{where}: unsupported content part (text or image_url)", where)


def _image(url: str, where: str, limits: Limits):
    data = _image_bytes(url, where, limits)
    try:
        return load_image(data, max_pixels=limits.max_pixels)
    except ImageError as err:
        raise ApiError(400, f"{where}: {err}", where, "invalid_image") from None


def _image_bytes(url: str, where: str, limits: Limits) -> bytes:
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise ApiError(400, f"{where}: data URLs must be base64", where, "invalid_image")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"{where}: invalid base64 image data", where, "invalid_image") from None
    elif url.startswith(("http://", "https://")):
        if not limits.allow_remote_images:
            raise ApiError(
                400, f"{where}: remote image URLs are disabled (serve with --allow-remote-images)", where
            )
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                data = response.read(limits.max_image_bytes + 1)
        except OSError as err:
            raise ApiError(
                400, f"{where}: cannot fetch image ({type(err).__name__})", where, "invalid_image"
            ) from None
    else:
        data = _local_file(url, where, limits)
    if len(data) > limits.max_image_bytes:
        raise ApiError(
            413, f"{where}: image larger than {limits.max_image_bytes} bytes", where, "image_too_large"
        )
    return data


def _local_file(url: str, where: str, limits: Limits) -> bytes:
    if limits.image_dir is None:
        raise ApiError(400, f"{where}: local image paths are disabled (serve with --image-dir DIR)", where)
    root = limits.image_dir.resolve()
    path = (root / url.removeprefix("file://")).resolve()
    if root not in path.parents:
        raise ApiError(
            403, f"{where}: image path is outside the allowed directory", where, "path_not_allowed"
        )
    if not path.is_file():
        raise ApiError(400, f"{where}: no such image file in the allowed directory", where, "invalid_image")
    return path.read_bytes()


def sampling(body: dict, limits: Limits) -> dict:
    """max_tokens, temperature, top_p, seed, checked."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", min(256, limits.max_tokens)))
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(400, f"max_tokens must be an integer from 1 to {limits.max_tokens}", "max_tokens")
    temperature = body.get("temperature", 1.0)
    top_p = body.get("top_p", 1.0)
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise ApiError(400, "temperature must be between 0 and 2", "temperature")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ApiError(400, "top_p must be in (0, 1]", "top_p")
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ApiError(400, "seed must be an integer", "seed")
    return {"max_tokens": max_tokens, "temperature": float(temperature), "top_p": float(top_p), "seed": seed}
