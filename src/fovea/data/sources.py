"""Where records come from: JSON / JSONL files and YAML mixtures with sampling strategies.

JSONL files are indexed by byte offset and read one line at a time, so a dataset larger than RAM
streams. A JSON list is parsed once (the format gives no other choice), element by element, so each
record's first line is known. A record is named as editors count, ``FILE:LINE`` (1-based). Mixtures follow LLaVA-NeXT's
``datasets: [{json_path, sampling_strategy}]`` YAML, with strategies ``all``, ``first:N``,
``end:N``, ``random:N`` (seeded) and ``first:P%``.

A JSONL line that cannot be read (bytes that are not UTF-8, malformed JSON) comes back as an
`Unreadable` naming the problem, so the dataset skips and names it like any other bad record.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError


@dataclass(frozen=True)
class Unreadable:
    """A JSONL line that is not a record at all; `reason` says why (kept apart from a JSON string row)."""

    reason: str


@dataclass(frozen=True)
class RecordRef:
    """One record's location: a file and the record's index in it (its k-th record)."""

    file: Path
    position: int


class RecordFile:
    """Random access to the records of one .json / .jsonl file."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such data file")
        self._list: list | None = None
        if path.suffix == ".jsonl":
            self.positions, self.lines = self._line_offsets()
        else:
            try:
                self._list, self.lines = _json_list(path.read_bytes().decode("utf-8-sig"))
            except UnicodeDecodeError as err:
                raise ConfigError(f"{path}: {_not_utf8(err)}") from None
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
            except ValueError:
                raise ConfigError(f"{path}: expected a JSON list of records") from None
            self.positions = list(range(len(self._list)))

    def _line_offsets(self) -> tuple[list[int], list[int]]:
        """(byte offset, 1-based line number) of every non-blank line."""
        offsets, lines, pos = [], [], 0
        with self.path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    offsets.append(pos)
                    lines.append(number)
                pos += len(line)
        return offsets, lines

    def line(self, k: int) -> int:
        """The 1-based line record `k` of this file (its k-th) begins on."""
        return self.lines[k]

    def read(self, k: int) -> object:
        """The file's k-th record; a JSONL line that cannot be read comes back as `Unreadable`."""
        if self._list is not None:
            return self._list[k]
        with self.path.open("rb") as f:
            f.seek(self.positions[k])
            line = f.readline()
        try:  # decoded here, not by json.loads: it would raise UnicodeDecodeError, a crash mid-run
            return json.loads(line.decode("utf-8-sig"))
        except UnicodeDecodeError as err:
            return Unreadable(f"{_not_utf8(err)} of the line")
        except json.JSONDecodeError as err:
            return Unreadable(f"malformed JSON ({err.msg})")


def _json_list(text: str) -> tuple[list, list[int]]:
    """A JSON list parsed element by element: (elements, the 1-based line each begins on); a
    JSONDecodeError where it is malformed, ValueError when it is not a list."""
    decoder, lines = json.JSONDecoder(), []
    at = _skip_space(text, 0)
    if not text.startswith("[", at):
        decoder.decode(text)  # a malformed document says where; a valid one is not a list
        raise ValueError("not a list")
    items, at = [], _skip_space(text, at + 1)
    while not text.startswith("]", at):
        item, end = decoder.raw_decode(text, at)
        items.append(item)
        lines.append(text.count("\n", 0, at) + 1)
        at = _skip_space(text, end)
        if text.startswith(",", at):
            at = _skip_space(text, at + 1)
            if text.startswith("]", at):
                decoder.decode(text)  # a trailing comma: raises, naming where
        elif not text.startswith("]", at):
            decoder.decode(text)  # raises, naming where
    if text[_skip_space(text, at + 1) :]:
        decoder.decode(text)
    return items, lines


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _not_utf8(err: UnicodeDecodeError) -> str:
    return f"not UTF-8 text: byte 0x{err.object[err.start]:02x} at offset {err.start}"


_STRATEGY = re.compile(r"^(all|first:\d+%?|end:\d+%?|random:\d+%?)$")


def sample_positions(positions: list[int], strategy: str, seed: int) -> list[int]:
    """Apply a LLaVA-NeXT sampling strategy to a file's record indices."""
    if not _STRATEGY.match(strategy):
        raise ConfigError(
            f"sampling_strategy {strategy!r}: expected all, first:N, end:N, random:N or first:P%"
        )
    if strategy == "all":
        return positions
    kind, amount = strategy.split(":")
    n = int(len(positions) * int(amount[:-1]) / 100) if amount.endswith("%") else int(amount)
    n = min(n, len(positions))
    if kind == "first":
        return positions[:n]
    if kind == "end":
        return positions[len(positions) - n :]
    return sorted(random.Random(seed).sample(positions, n))


class RecordSource:
    """All records of a data spec (a .json, a .jsonl or a .yaml mixture), addressable by index."""

    def __init__(self, spec: str | Path, seed: int = 0):
        spec = Path(spec)
        self.files: dict[Path, RecordFile] = {}
        self.refs: list[RecordRef] = []
        for path, strategy in _entries(spec):
            file = self.files.setdefault(path, RecordFile(path))
            indices = list(range(len(file.positions)))
            self.refs += [RecordRef(path, k) for k in sample_positions(indices, strategy, seed)]

    def __len__(self) -> int:
        return len(self.refs)

    def read(self, index: int) -> tuple[object, str]:
        """(raw record, fallback id ``FILE:LINE``: its file's name and the line it begins on)."""
        ref = self.refs[index]
        return self.files[ref.file].read(ref.position), f"{ref.file.name}:{self.line(index)}"

    def file(self, index: int) -> Path:
        """The data file record `index` comes from."""
        return self.refs[index].file

    def line(self, index: int) -> int:
        """The 1-based line of its file record `index` begins on."""
        ref = self.refs[index]
        return self.files[ref.file].line(ref.position)

    def where(self, index: int) -> str:
        """``FILE:LINE`` of record `index`, as editors count: named in every problem it is skipped for."""
        return f"{self.file(index)}:{self.line(index)}"

    def folder(self, index: int) -> Path:
        """Directory of the file record `index` comes from (default root of its images)."""
        return self.refs[index].file.parent


def _entries(spec: Path) -> list[tuple[Path, str]]:
    if spec.suffix in (".yaml", ".yml"):
        if not spec.is_file():
            raise FileNotFoundError(f"{spec}: no such data mixture")
        try:
            data = yaml.safe_load(spec.read_bytes().decode("utf-8-sig")) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"{spec}: {_not_utf8(err)}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{spec}: not valid YAML ({str(err).splitlines()[0]})") from None
        items = data.get("datasets") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{spec}: expected 'datasets:' with a list of {{json_path, sampling_strategy}}")
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "json_path" not in item:
                raise ConfigError(f"{spec}: datasets[{i}] needs a json_path")
            path = Path(item["json_path"])
            out.append(
                (
                    path if path.is_absolute() else spec.parent / path,
                    str(item.get("sampling_strategy", "all")),
                )
            )
        return out
    return [(spec, "all")]
