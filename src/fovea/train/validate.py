"""Check a whole recipe before its first step: a typo in the last stage must not cost the first.

`check_recipe` runs when a recipe loads: every stage's parts and learning rates, template, image
mode, label quirk, batch arithmetic and every number of the run (ranges, not only types).
`check_files` runs when training starts (and for ``fovea train --check``): the data files, the
members of data mixtures and the image folders exist, and each stage's batch divides over the
processes. Each problem is one `ConfigError` naming its dotted path, e.g.
``stages.1.grad_clip: must be positive (null: no clipping), got -1.0``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.labels import QUIRKS
from ..errors import ConfigError
from ..imaging.processor import check_image_mode
from ..model.templates import TEMPLATES
from ..registry import suggest
from .parts import PARTS, PartIndex, block_unit_mismatch, part_of

if TYPE_CHECKING:  # annotations only: recipe.py runs these checks when a recipe loads
    from .recipe import Recipe, StageSpec


def _fail(path: str, message: str, value) -> None:
    raise ConfigError(f"{path}: {message}, got {value!r}")


def _at_least(path: str, value, low, what: str = "") -> None:
    if value is not None and not value >= low:
        _fail(path, what or f"must be at least {low}", value)


def _positive(path: str, value, what: str = "must be positive") -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        _fail(path, what, value)


def _named(path: str, lookup) -> None:
    """Run a registry lookup; its error (with did-you-mean) gets the recipe path in front."""
    try:
        lookup()
    except (ConfigError, ValueError, FileNotFoundError) as err:
        raise ConfigError(f"{path}: {err}") from None


def check_recipe(recipe: Recipe) -> None:
    """Every check that needs no file and no model; raises the first problem found."""
    model = recipe.model
    _named("model.template", lambda: TEMPLATES.get(model.template))
    _at_least("model.max_length", model.max_length, 1)
    for i, stage in enumerate(recipe.stages):
        _check_stage(f"stages.{i}", stage)
    run = recipe.run
    for key in ("log_every", "save_every", "keep_last"):
        _at_least(f"run.{key}", getattr(run, key), 1)
    _at_least("run.num_workers", run.num_workers, 0)
    lora = recipe.lora
    if lora is not None:
        _at_least("lora.r", lora.r, 1)
        _positive("lora.alpha", lora.alpha)
        _positive("lora.lr", lora.lr)
        if not 0 <= lora.dropout < 1:
            _fail("lora.dropout", "must be in [0, 1)", lora.dropout)


def _check_stage(path: str, stage: StageSpec) -> None:
    if not stage.train:
        _fail(f"{path}.train", "must name at least one part to train", stage.train)
    for part, lr in stage.train.items():
        if not _is_part(part):
            raise ConfigError(
                f"{path}.train: unknown part {part!r}{suggest(part, list(PARTS))}; parts are {', '.join(PARTS)}"
            )
        _positive(f"{path}.train.{part}", lr, "learning rate must be a positive number")
    if stage.template is not None:
        _named(f"{path}.template", lambda: TEMPLATES.get(stage.template))
    if stage.image_mode is not None:
        _named(f"{path}.image_mode", lambda: check_image_mode(stage.image_mode))
    if stage.label_quirk not in QUIRKS:
        _fail(f"{path}.label_quirk", f"must be one of {', '.join(str(q) for q in QUIRKS)}", stage.label_quirk)
    _at_least(f"{path}.batch_size", stage.batch_size, 1)
    _at_least(f"{path}.micro_batch_size", stage.micro_batch_size, 1)
    _at_least(f"{path}.pack_tokens", stage.pack_tokens, 1)
    if stage.micro_batch_size and stage.batch_size % stage.micro_batch_size:
        _fail(
            f"{path}.micro_batch_size", f"must divide batch_size {stage.batch_size}", stage.micro_batch_size
        )
    _positive(f"{path}.epochs", stage.epochs, "must be positive (or set max_steps)")
    _at_least(f"{path}.max_steps", stage.max_steps, 1)
    if not 0 <= stage.warmup_ratio <= 1:
        _fail(f"{path}.warmup_ratio", "must be in [0, 1]", stage.warmup_ratio)
    _at_least(f"{path}.weight_decay", stage.weight_decay, 0, "must not be negative")
    _positive(f"{path}.grad_clip", stage.grad_clip, "must be positive (null: no clipping)")


def _is_part(part: str) -> bool:
    try:
        part_of("", part, PartIndex())
    except ConfigError:
        return False
    return True


def check_files(recipe: Recipe, world: int = 1) -> None:
    """What training needs from the file system and the process count, for every stage."""
    for i, stage in enumerate(recipe.stages):
        path = f"stages.{i}"
        _named(f"{path}.data", lambda stage=stage: _data_files(Path(stage.data)))
        if stage.image_root is not None and not Path(stage.image_root).is_dir():
            _fail(f"{path}.image_root", "no such directory", stage.image_root)
        micro = stage.micro_batch_size or max(1, stage.batch_size // world)
        if stage.batch_size % (micro * world):
            _fail(
                f"{path}.batch_size",
                f"must be a multiple of micro_batch_size {micro} x {world} processes",
                stage.batch_size,
            )


def _data_files(spec: Path) -> None:
    """The data file, or every member of a mixture, exists (sampling strategies are valid)."""
    from ..data.sources import _entries, sample_positions

    for path, strategy in _entries(spec):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such data file")
        sample_positions(list(range(4)), strategy, 0)


def check_parts_match(recipe: Recipe, model) -> None:
    """Each stage's parts cover at least one parameter of the built model (``tower.layers.30-40``
    on a 24-block tower would otherwise train nothing, silently)."""
    names, index = [name for name, _ in model.named_parameters()], PartIndex.of(model)
    for i, stage in enumerate(recipe.stages):
        for part in stage.train:
            why = block_unit_mismatch(part, index)
            if why:
                raise ConfigError(f"stages.{i}.train: part {part!r} does not fit: {why}")
            if not any(part_of(name, part, index) for name in names):
                raise ConfigError(f"stages.{i}.train: part {part!r} matches no parameter of this model")


# Settings a resumed run may change: they do not touch what is trained or how.
_RESUME_FREE = {"run.progress", "run.report_to", "run.log_every", "run.keep_last", "run.num_workers"}


def check_same_recipe(out: Path, recipe: Recipe) -> None:
    """A run directory that has started training resumes only with the recipe it started with
    (``recipe.json``); a changed learning rate or dataset would silently mix two runs."""
    from ..config import to_dict

    saved = out / "recipe.json"
    if not saved.is_file() or not any(out.glob("stage-*")):
        return
    try:
        before = json.loads(saved.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{saved}: unreadable; move {out} away or choose another run.out_dir") from None
    change = _first_change(before, to_dict(recipe), "")
    if change:
        raise ConfigError(
            f"{out} was started with another recipe ({change}); restore it to resume, "
            "or choose another run.out_dir"
        )


def _first_change(a, b, path: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            sub = f"{path}.{key}" if path else str(key)
            found = None if sub in _RESUME_FREE else _first_change(a.get(key), b.get(key), sub)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next(
            (f for i, (x, y) in enumerate(zip(a, b)) if (f := _first_change(x, y, f"{path}.{i}"))), None
        )
    return None if a == b else f"{path}: {a!r} then, {b!r} now"
