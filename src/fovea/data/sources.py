"""Where records come from: JSON / JSONL files and YAML mixtures with sampling strategies.

JSONL files are indexed by byte offset and read one line at a time, so a dataset larger than RAM
streams. A JSON list is parsed once (the format gives no other choice). Mixtures follow LLaVA-NeXT's
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
    """One record's location: a file and either a byte offset (JSONL) or an index (JSON list)."""

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
            self.positions = self._line_offsets()
        else:
            try:
                self._list = json.loads(path.read_bytes().decode("utf-8-sig"))
            except UnicodeDecodeError as err:
                raise ConfigError(f"{path}: {_not_utf8(err)}") from None
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
            if not isinstance(self._list, list):
                raise ConfigError(f"{path}: expected a JSON list of records")
            self.positions = list(range(len(self._list)))

    def _line_offsets(self) -> list[int]:
        offsets, pos = [], 0
        with self.path.open("rb") as f:
            for line in f:
                if line.strip():
                    offsets.append(pos)
                pos += len(line)
        return offsets

    def read(self, position: int) -> object:
        """The record at `position`; a JSONL line that cannot be read comes back as `Unreadable`."""
        if self._list is not None:
            return self._list[position]
        with self.path.open("rb") as f:
            f.seek(position)
            line = f.readline()
        try:  # decoded here, not by json.loads: it would raise UnicodeDecodeError, a crash mid-run
            return json.loads(line.decode("utf-8-sig"))
        except UnicodeDecodeError as err:
            return Unreadable(f"{_not_utf8(err)} of the line")
        except json.JSONDecodeError as err:
            return Unreadable(f"malformed JSON ({err.msg})")


def _not_utf8(err: UnicodeDecodeError) -> str:
    return f"not UTF-8 text: byte 0x{err.object[err.start]:02x} at offset {err.start}"


_STRATEGY = re.compile(r"^(all|first:\d+%?|end:\d+%?|random:\d+%?)$")


def sample_positions(positions: list[int], strategy: str, seed: int) -> list[int]:
    """Apply a LLaVA-NeXT sampling strategy to a file's record positions."""
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
            self.refs += [RecordRef(path, p) for p in sample_positions(file.positions, strategy, seed)]

    def __len__(self) -> int:
        return len(self.refs)

    def read(self, index: int) -> tuple[object, str]:
        """(raw record, fallback id 'file#index')."""
        ref = self.refs[index]
        return self.files[ref.file].read(ref.position), f"{ref.file.name}#{index}"

    def file(self, index: int) -> Path:
        """The data file record `index` comes from (named in every problem it is skipped for)."""
        return self.refs[index].file

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
