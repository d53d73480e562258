"""LLaVA training records: reading, normalising and checking them.

A record is LLaVA's JSON object: ``{"id": ..., "image": "a.jpg" | [...], "images": [...],
"video": "clip.mp4", "conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}``
(``role``/``content`` spellings accepted). A video record marks its video with ``<video>``, or, as
LLaVA-NeXT's data does, with the one ``<image>`` tag of a record without images. `normalise` turns one into a `Sample` (messages with fovea roles, image
paths resolved against the image root) or raises `BadRecord` naming the record and the problem.
Anything JSON can hold may turn up (a string or number row, a null field, a line that was never
JSON); each is a `BadRecord`, never a TypeError. `skip_reason` is the one line a skip is reported
with, by training and by `fovea data check` alike: data file, record id, problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .sources import Unreadable

IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class BadRecord(ValueError):
    """A record that cannot be trained on; the message names the record and the reason."""


@dataclass
class Sample:
    id: str
    messages: list[dict]
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    """Video files or folders of frames (`model.visuals` places them by their <video> tags)."""


def record_id(record: object, fallback: str) -> str:
    """The record's own id; its place in the data (`fallback`) when it has none (or a null one)."""
    rid = record.get("id") if isinstance(record, dict) else None
    return fallback if rid is None or rid == "" else str(rid)


def skip_reason(where: Path | str, rid: str, err: Exception) -> str:
    """The one line a skipped record is reported with: where it is (``FILE:LINE``, 1-based), the
    record id, the problem."""
    # a BadRecord already begins "record <id>: "; an ImageError names only the image
    return f"{where}: {err}" if isinstance(err, BadRecord) else f"{where}: record {rid}: {err}"


def normalise(record: object, image_root: Path | None, fallback_id: str, check_files: bool = True) -> Sample:
    """A checked Sample from a raw record, or BadRecord."""
    rid = record_id(record, fallback_id)
    if isinstance(record, Unreadable):  # a JSONL line that is not JSON at all: it says why
        raise BadRecord(f"record {rid}: {record.reason}")
    if not isinstance(record, dict):
        raise BadRecord(f"record {rid}: not a JSON object but {_json_kind(record)}")
    messages = _messages(record, rid)
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise BadRecord(f"record {rid}: no assistant answer to learn from")
    images = _image_paths(record, rid, image_root)
    videos = _video_paths(record, rid, image_root, images, messages)
    tags = sum(m["content"].count(IMAGE_TAG) for m in messages)
    if tags != len(images) and not (tags == 0 and images):
        null = [k for k in ("image", "images") if k in record and record[k] is None]
        found = f"{null[0]} is null" if null and not images else f"{len(images)} images"
        raise BadRecord(f"record {rid}: {tags} {IMAGE_TAG} tags but {found}")
    if tags == 0 and images:  # LLaVA places untagged images at the start of the first user turn
        first = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first is None:
            raise BadRecord(f"record {rid}: {len(images)} images but no user turn to place them in")
        messages[first]["content"] = f"{IMAGE_TAG}\n" * len(images) + messages[first]["content"]
    if check_files:
        for path in images:
            if not _is_file(path):
                raise BadRecord(f"record {rid}: image {path} not found")
        for path in videos:
            if not (_is_file(path) or path.is_dir()):
                raise BadRecord(f"record {rid}: video {path} not found")
    return Sample(rid, messages, images, videos)


def _video_paths(record: dict, rid: str, root: Path | None, images: list, messages: list[dict]) -> list[Path]:
    """The record's video, its tag made ``<video>`` where LLaVA-NeXT's form marks it ``<image>``."""
    raw = record.get("video")
    if raw is None:
        return []
    if not isinstance(raw, str) or not raw:
        raise BadRecord(f"record {rid}: video must be a path")
    tags = sum(m["content"].count(VIDEO_TAG) for m in messages)
    if tags == 0 and not images and sum(m["content"].count(IMAGE_TAG) for m in messages) == 1:
        for m in messages:
            m["content"] = m["content"].replace(IMAGE_TAG, VIDEO_TAG)
    elif tags > 1:
        raise BadRecord(f"record {rid}: {tags} {VIDEO_TAG} tags but one video")
    return [Path(raw) if root is None or Path(raw).is_absolute() else root / raw]


def _json_kind(value: object) -> str:
    names = {str: "a string", list: "a list", dict: "an object", bool: "a boolean", int: "a number"}
    return "null" if value is None else names.get(type(value), "a number")


def _messages(record: dict, rid: str) -> list[dict]:
    """The turns with fovea roles; BadRecord for null, empty or malformed turns."""
    key = "conversations" if record.get("conversations") is not None else "messages"
    turns = record.get(key)
    if turns is None:
        null = [k for k in ("conversations", "messages") if k in record]
        raise BadRecord(f"record {rid}: {null[0]} is null" if null else f"record {rid}: no conversations")
    if not isinstance(turns, list):
        raise BadRecord(f"record {rid}: {key} is {_json_kind(turns)}, not a list of turns")
    if not turns:
        raise BadRecord(f"record {rid}: empty conversations")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRecord(f"record {rid}: turn {i} is {_json_kind(turn)}, not an object")
        speaker = turn.get("from", turn.get("role"))
        role = _ROLES.get(speaker) if isinstance(speaker, str) else None  # a list is unhashable
        content = turn.get("value", turn.get("content"))
        if role is None or not isinstance(content, str):
            raise BadRecord(f"record {rid}: turn {i} needs from/value (or role/content) text")
        messages.append({"role": role, "content": content})
    return messages


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the file system: as good as missing
        return False


def _image_paths(record: dict, rid: str, root: Path | None) -> list[Path]:
    # a null "images" means none, so an "image" beside it still counts
    raw = record.get("images") if record.get("images") is not None else record.get("image")
    if raw is None:
        return []
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise BadRecord(f"record {rid}: image/images must be a path or a list of paths")
    return [Path(n) if root is None or Path(n).is_absolute() else root / n for n in names]
