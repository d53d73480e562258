"""`fovea convert`: any readable checkpoint -> fovea's format or transformers' LlavaNext/LlavaOnevision layout.

Conversion streams: the source is checked from its headers against the model's names and shapes
(nothing loaded), then tensors are read one at a time, renamed, cast, and written into output
shards of at most `max_shard_size` bytes. Peak memory is about one output shard, never the model.
The output is written to ``DST.partial`` and renamed at the end, so a failed run leaves no
half-written model behind.

Nothing convert did not create is ever deleted: ``DST.partial`` carries a marker file written
first, and only a marked one is removed; ``overwrite`` replaces DST only when it is a model
checkpoint (a flat directory whose ``config.json`` names a model); a DST that is, contains or lies
inside one of the inputs is refused before anything is written.

``--to NAME`` picks the registered layout that writes under that name (checkpoints/layouts.py):
``fovea`` (fovea_format.py) or ``hf``: transformers' LlavaOnevision when the model needs it (the
anyres_max shrink, base-view multi-image, pooled video; llava_onevision_writer.py), else LlavaNext
(llava_next_writer.py). Its writer renames and adjusts each tensor as it streams past, then writes
the layout's other files.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..tensor_files import INDEX, plan_load, read_planned
from .fovea_format import FORMAT
from .layouts import LAYOUTS
from .loader import open_checkpoint

logger = logging.getLogger(__name__)

PARTIAL_MARKER = ".fovea-partial"
"""Written first into ``DST.partial``: only a directory holding it is fovea's to delete."""


@dataclass
class Report:
    destination: Path
    tensors: int = 0
    bytes: int = 0
    shards: int = 0
    notes: list[str] = field(default_factory=list)


class ShardWriter:
    """Collects tensors and writes a safetensors shard whenever `max_bytes` would be exceeded."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.size = 0
        self.files: list[tuple[str, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.size + nbytes > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"shard-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, self.directory / name, metadata={"format": "pt"})
        self.files.append((name, list(self.pending)))
        self.pending, self.size = {}, 0

    def close(self) -> int:
        """Final names (model.safetensors, or model-i-of-n + index); returns the shard count."""
        self.flush()
        n = len(self.files)
        final = (
            ["model.safetensors"]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        weight_map = {}
        for (tmp, keys), name in zip(self.files, final):
            (self.directory / tmp).rename(self.directory / name)
            weight_map.update({k: name for k in keys})
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            (self.directory / INDEX).write_text(json.dumps(index, indent=2))
        return n


def convert(
    source: str | Path,
    destination: str | Path,
    *,
    to: str = "hf",
    dtype: torch.dtype | None = None,
    max_shard_size: int = 2 * 1024**3,
    base: str | None = None,
    tower: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Report:
    """Convert `source` (any layout fovea reads) into `destination`; see the module docstring."""
    layout = export_layout(to)
    dest = Path(destination)
    work = dest.with_name(dest.name + ".partial")
    _refuse_overlap(dest, work, [p for p in (source, base, tower) if p and Path(p).exists()])
    _check_replaceable(dest, overwrite)
    _check_partial(work)
    opened = open_checkpoint(source, base=base, tower=tower)
    _refuse_overlap(dest, work, [opened.directory])  # a hub id resolves only now
    target = layout.writer(opened)  # refuses what the layout cannot express, before any weight
    skeleton = opened.skeleton()
    opened.attach(skeleton)
    plans = plan_load(skeleton, opened.sources(skeleton))
    _start_partial(work)
    try:
        report = _write(opened, skeleton, plans, target, work, Report(dest), dtype, max_shard_size, progress)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # ours: marked and created by this run
        raise
    _check_replaceable(dest, overwrite)  # again: DST may have changed during a long conversion
    (work / PARTIAL_MARKER).unlink()
    if dest.exists():
        shutil.rmtree(dest)  # an empty directory or a checkpoint, checked just above
    work.rename(dest)
    return report


def _write(
    opened, skeleton, plans, target, work: Path, report: Report, dtype, max_shard_size, progress
) -> Report:
    writer = ShardWriter(work, max_shard_size)
    bar = tqdm(total=len(plans), disable=not progress, desc="convert", unit="tensor")
    for plan, tensor in read_planned(plans, dtype):
        name = target.rename(plan.target)
        writer.add(name, target.adjust(name, tensor))
        bar.update()
    bar.close()
    report.shards, report.tensors, report.bytes = writer.close(), len(plans), writer.total
    report.notes.extend(target.finish(work, skeleton))
    return report


def export_layout(name: str):
    """The registered layout that ``--to NAME`` writes (a layout with a writer)."""
    names = {LAYOUTS.get(n).export_as: LAYOUTS.get(n) for n in LAYOUTS if LAYOUTS.get(n).writer}
    if name not in names:
        raise ConfigError(f"unknown target format {name!r}; expected one of {', '.join(sorted(names))}")
    return names[name]


# -- what convert may write over or delete -----------------------------------------------------


def _refuse_overlap(dest: Path, work: Path, inputs: list) -> None:
    """ConfigError when DST (or DST.partial) is, contains or lies inside an input directory."""
    for output in (dest, work):
        out = output.resolve()
        for item in inputs:
            src = Path(item).resolve()
            relation = "is" if out == src else "contains" if out in src.parents else None
            relation = relation or ("lies inside" if src in out.parents else None)
            if relation:
                raise ConfigError(
                    f"{output}: the destination {relation} the source {item}; choose a directory outside it"
                )


def _check_replaceable(dest: Path, overwrite: bool) -> None:
    """DST may be new or an empty directory; with `overwrite`, also a checkpoint (see below)."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        kind = "a symbolic link" if dest.is_symlink() else "a file"
        raise ConfigError(f"{dest}: exists and is {kind}, not a directory; choose another destination")
    above = next(p for p in dest.absolute().parents if p.exists())
    if not above.is_dir():
        raise ConfigError(f"{dest}: {above} is a file, not a directory; choose another destination")
    if not dest.exists() or not any(dest.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{dest}: exists and is not empty (choose another directory or overwrite)")
    if not _is_checkpoint(dest):
        raise ConfigError(
            f"{dest}: not a model checkpoint (a flat directory whose config.json names a model), "
            "so overwrite leaves it alone; choose another destination"
        )


def _is_checkpoint(directory: Path) -> bool:
    """What overwrite may delete: config.json naming a model (fovea's format or a transformers
    model_type) and no subfolders; a folder holding folders is a workspace, not a checkpoint."""
    try:
        raw = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    names_model = isinstance(raw, dict) and (raw.get("format") == FORMAT or "model_type" in raw)
    return names_model and not any(p.is_dir() for p in directory.iterdir())


def _check_partial(work: Path) -> None:
    """A leftover ``DST.partial`` is ours to delete only as a real directory holding the marker."""
    if not (work.exists() or work.is_symlink()):
        return
    if work.is_symlink() or not work.is_dir() or not (work / PARTIAL_MARKER).is_file():
        raise ConfigError(
            f"{work}: exists and was not made by fovea convert (no {PARTIAL_MARKER}); "
            "move it away or choose another destination"
        )


def _start_partial(work: Path) -> None:
    """Replace a marked leftover of an interrupted run by a fresh, marked ``DST.partial``."""
    _check_partial(work)
    if work.exists():
        shutil.rmtree(work)
    try:
        work.mkdir(parents=True)
    except OSError as err:
        raise ConfigError(f"{work}: cannot create the output directory: {err.strerror or err}") from None
    (work / PARTIAL_MARKER).write_text("written by fovea convert; deleted when the conversion finishes\n")
