"""Benchmark tasks: where the data is, how a question becomes a prompt, which scorer reads the answer.

A task is a small YAML file (``fovea/eval/tasks/*.yaml`` ships the published benchmarks; a path to
your own file works the same way)::

    name: chartqa
    protocol: lmms-eval 0.7.2 chartqa — relaxed accuracy (5%), greedy, 16 new tokens
    data: {local: ChartQA, hub: lmms-lab-encoder/ChartQA, split: test}
    images: [image]
    prompt: "{question}\\nAnswer the question with a single word."
    max_new_tokens: 16
    scorer: chartqa

Data is read from ``<data-root>/<data.local>``: a parquet file or a folder of them (searched
recursively, as the MLCD-Embodied loaders do), a JSON / JSONL file or folder, or a folder written by
``datasets``' ``save_to_disk``. With ``hub=True`` and no local copy, ``datasets.load_dataset`` fetches
``data.hub``. Rows that cannot become a sample (a missing field, an unreadable image) become
`BadSample`s naming the row's id; the rest of the task runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import from_dict, load_yaml
from ..errors import ConfigError, FoveaError
from ..registry import suggest
from .scorers import SCORERS, make_synthetic

BUILTIN = Path(__file__).parent / "tasks"
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class DataError(FoveaError):
    """Benchmark data is missing or unreadable (names the task, the file or the sample id)."""


@dataclass
class DataSpec:
    local: str = ""
    """Path under the data root (file or folder); default: the task name."""
    hub: str = ""
    """Dataset id for `datasets.load_dataset` when there is no local copy and the hub is allowed."""
    config: str = ""
    split: str = "test"


@dataclass
class TaskSpec:
    name: str
    scorer: str
    protocol: str = ""
    """The published protocol this task reproduces, printed beside every score."""
    data: DataSpec = field(default_factory=DataSpec)
    id: str = ""
    """Column holding the sample id; empty: the row number."""
    images: list[str] = field(default_factory=lambda: ["image"])
    """Columns holding an image, a list of images, or a path (relative to the data file)."""
    prompt: str = "{question}"
    """A format string over the row's columns; the scorer may build it instead (MMMU, choices)."""
    answer: str = "answer"
    group: str = ""
    """Column that splits the score into categories (question type, subject, ...)."""
    max_new_tokens: int = 32
    where: dict[str, str] = field(default_factory=dict)
    """Keep only rows whose column equals the value (one benchmark file, several tasks)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Scorer options (e.g. which columns hold multiple-choice options)."""
    source: str = ""


@dataclass
class Sample:
    task: str
    id: str
    prompt: str
    images: list
    doc: dict
    """The row without its image payloads: what the scorer and the record need."""


@dataclass
class BadSample:
    task: str
    id: str
    error: str


GROUPS = {
    "synthetic": [
        f"synth_{kind}" for kind in ("colour", "shape", "count", "position", "word", "chart", "frames")
    ],
    "embodied": ["robovqa", "openeqa"],
    "refcoco": ["refcoco_val", "refcoco_testA", "refcoco_testB"],
    "refcocoplus": ["refcocoplus_val", "refcocoplus_testA", "refcocoplus_testB"],
    "refcocog": ["refcocog_val", "refcocog_test"],
}
"""Names that stand for several tasks."""


def available() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.yaml"))


def expand(names: list[str]) -> list[str]:
    """Task names with groups replaced by their members (order kept, duplicates dropped)."""
    out = [m for n in names for m in GROUPS.get(n, [n])]
    return list(dict.fromkeys(out))


def load_task(name: str | Path) -> TaskSpec:
    """A built-in task by name, or a task YAML file by path."""
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = BUILTIN / f"{name}.yaml"
        if not path.is_file():
            known = available() + list(GROUPS)
            raise ConfigError(f"unknown task {str(name)!r}{suggest(str(name), known)}")
    spec = from_dict(TaskSpec, load_yaml(path), path=path.stem)
    spec.source = str(path)
    if not _PLAIN_NAME.fullmatch(spec.name) or spec.name in (".", ".."):
        # The name becomes RUN/<name>/ on disk: a path here would write outside the run folder.
        raise ConfigError(
            f"{path}: field 'name' is {spec.name!r}; a task name must be a plain file name "
            "(letters, digits, _, - and ., not . or ..)"
        )

    if spec.scorer not in SCORERS:
        SCORERS.get(spec.scorer)  # raises with the known names
    return spec


# -- reading rows ------------------------------------------------------------------------------


def locate(spec: TaskSpec, data_root: str | Path) -> Path:
    return Path(data_root).expanduser() / (spec.data.local or spec.name)


def read_rows(spec: TaskSpec, data_root: str | Path, hub: bool = False) -> Iterator[tuple[dict, Path]]:
    """Rows of the task's data as dicts, each with the folder its relative image paths start from."""
    where = locate(spec, data_root)
    if where.exists():
        yield from _read_local(where, spec)
    elif spec.scorer == "synthetic":  # the bundled benchmark: drawn on first use, same seed every time
        make_synthetic(where)
        yield from _read_local(where, spec)
    elif hub and spec.data.hub:
        import datasets

        ds = datasets.load_dataset(spec.data.hub, spec.data.config or None, split=spec.data.split)
        for row in ds:
            yield dict(row), where
    else:
        hint = f" or allow the hub (--hub) for {spec.data.hub}" if spec.data.hub else ""
        raise DataError(f"task {spec.name}: no data at {where}; put the benchmark there{hint}")


def _read_local(where: Path, spec: TaskSpec) -> Iterator[tuple[dict, Path]]:
    if where.is_dir() and (
        (where / "dataset_info.json").is_file() or (where / "dataset_dict.json").is_file()
    ):
        import datasets

        ds = datasets.load_from_disk(str(where))
        if isinstance(ds, datasets.DatasetDict):
            if spec.data.split not in ds:
                raise DataError(f"task {spec.name}: {where} has splits {list(ds)}, not {spec.data.split!r}")
            ds = ds[spec.data.split]
        for row in ds:
            yield dict(row), where
        return
    files = (
        [where]
        if where.is_file()
        else sorted(
            p for p in where.rglob("*") if p.suffix in (".parquet", ".jsonl", ".json") and p.is_file()
        )
    )
    if not files:
        raise DataError(f"task {spec.name}: {where} holds no parquet, JSON or JSONL files")
    for path in files:
        yield from ((row, path.parent) for row in _read_file(path, spec.name))


def _read_file(path: Path, task: str) -> Iterator[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
            for batch in table.iter_batches(batch_size=64):
                yield from batch.to_pylist()
        except (OSError, ValueError) as err:  # pyarrow's errors subclass these
            raise DataError(f"task {task}: {path} is not a readable parquet file ({err})") from None
        return
    raw = path.read_bytes()
    if path.suffix == ".jsonl":
        for n, line in enumerate(raw.splitlines(), 1):
            if line.strip():
                try:
                    yield json.loads(line.decode("utf-8"))
                except UnicodeDecodeError:
                    yield {"__error__": f"{path}:{n}: not UTF-8 text", "__line__": n}
                except json.JSONDecodeError as err:
                    yield {"__error__": f"{path}:{n}: not JSON ({err.msg})", "__line__": n}
        return
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"task {task}: {path}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DataError(f"task {task}: {path}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, list):
        raise DataError(f"task {task}: {path}: expected a list of records")
    yield from data


# -- rows to samples ---------------------------------------------------------------------------


def samples(spec: TaskSpec, data_root: str | Path, hub: bool = False) -> Iterator[Sample | BadSample]:
    """Every row of the task as a `Sample` ready to generate, or a `BadSample` saying why not."""

    scorer = SCORERS.get(spec.scorer)
    matched = 0
    for index, (row, base) in enumerate(read_rows(spec, data_root, hub)):
        if not isinstance(row, dict):  # a string or a list where a record belongs
            yield BadSample(spec.name, str(index), f"not a record but {type(row).__name__} {str(row)[:40]!r}")
            continue
        if spec.where and not all(str(row.get(k)) == str(v) for k, v in spec.where.items()):
            continue
        matched += 1
        sample_id = str(row.get(spec.id, index) if spec.id else index)
        try:
            if "__error__" in row:
                raise DataError(row["__error__"])
            if spec.answer and row.get(spec.answer) is None and not scorer.answer_optional:
                raise DataError(f"no {spec.answer!r} field")
            images, columns = _row_images(spec, scorer, row, base)
            doc = {k: _plain(v) for k, v in row.items() if k not in columns}
            prompt = scorer.prompt(spec, row) if scorer.prompt else spec.prompt.format(**row)
            yield Sample(spec.name, sample_id, prompt, images, doc)
        except (DataError, KeyError, TypeError, ValueError) as err:
            message = f"missing field {err}" if isinstance(err, KeyError) else str(err)
            yield BadSample(spec.name, sample_id, message)
    if not matched and spec.scorer == "synthetic":
        raise DataError(
            f"task {spec.name}: no {spec.where} questions in {locate(spec, data_root)}: the bundled set "
            "there was drawn by an earlier fovea; remove that folder and the current one is drawn"
        )


def _row_images(spec: TaskSpec, scorer, row: dict, base: Path) -> tuple[list, list[str]]:
    """The row's images; an image column without one is an error (never a silent text-only
    sample). Scorers that choose columns per row (MMMU's image_1..7) decide for themselves."""
    columns = scorer.image_columns(spec, row) if scorer.image_columns else spec.images
    images = []
    for column in columns:
        values = _values(row, column)
        if not values and not scorer.image_columns:
            raise DataError(f"no image in column {column!r}")
        images += [_image(value, base) for value in values]
    return images, columns


def _values(row: dict, column: str) -> list:
    value = row.get(column)
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _image(value: Any, base: Path):
    """An image cell as something `load_image` reads: PIL as is, bytes, or a path."""
    if isinstance(value, dict):  # datasets' Image feature in parquet: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, str):
        path = Path(value)
        return path if path.is_absolute() else base / path
    if value is None:
        raise DataError("an image cell is empty")
    return value


def _plain(value: Any) -> Any:
    """A JSON-safe copy of a cell (image-like payloads dropped)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not isinstance(v, bytes)}
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
