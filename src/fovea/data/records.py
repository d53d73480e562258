"""LLaVA training records: reading, normalising and checking them.

A record is LLaVA's JSON object: ``{"id": ..., "image": "a.jpg" | [...], "images": [...],
"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}`` (``role``/``content``
spellings accepted). `normalise` turns one into a `Sample` (messages with fovea roles, image
paths resolved against the image root) or raises `BadRecord` naming the record and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

IMAGE_TAG = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class BadRecord(ValueError):
    """A record that cannot be trained on; the message names the record and the reason."""


@dataclass
class Sample:
    id: str
    messages: list[dict]
    images: list[Path] = field(default_factory=list)


def record_id(record: object, fallback: str) -> str:
    return str(record.get("id", fallback)) if isinstance(record, dict) else fallback


def normalise(record: object, image_root: Path | None, fallback_id: str, check_files: bool = True) -> Sample:
    """A checked Sample from a raw record, or BadRecord."""
    rid = record_id(record, fallback_id)
    if isinstance(record, str):  # a JSONL line that did not parse: the string says why
        raise BadRecord(f"record {rid}: {record}")
    if not isinstance(record, dict):
        raise BadRecord(f"record {rid}: not a JSON object")
    turns = record.get("conversations") or record.get("messages")
    if not isinstance(turns, list) or not turns:
        raise BadRecord(f"record {rid}: empty or missing conversations")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRecord(f"record {rid}: turn {i} is not an object")
        role = _ROLES.get(turn.get("from", turn.get("role")))
        content = turn.get("value", turn.get("content"))
        if role is None or not isinstance(content, str):
            raise BadRecord(f"record {rid}: turn {i} needs from/value (or role/content) text")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise BadRecord(f"record {rid}: no assistant answer to learn from")
    images = _image_paths(record, rid, image_root)
    tags = sum(m["content"].count(IMAGE_TAG) for m in messages)
    if tags != len(images) and not (tags == 0 and images):
        raise BadRecord(f"record {rid}: {tags} {IMAGE_TAG} tags but {len(images)} images")
    if tags == 0 and images:  # LLaVA places untagged images at the start of the first user turn
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[first]["content"] = f"{IMAGE_TAG}\n" * len(images) + messages[first]["content"]
    if check_files:
        for path in images:
            if not path.is_file():
                raise BadRecord(f"record {rid}: image {path} not found")
    return Sample(rid, messages, images)


def _image_paths(record: dict, rid: str, root: Path | None) -> list[Path]:
    raw = record.get("images", record.get("image"))
    if raw is None:
        return []
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise BadRecord(f"record {rid}: image/images must be a path or a list of paths")
    return [Path(n) if root is None or Path(n).is_absolute() else root / n for n in names]
