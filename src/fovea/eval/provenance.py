"""What made an eval run, so that a resumed run can never mix two models' answers.

A run directory's ``run.json`` holds an *identity*: a fingerprint of the model (its whole config
and a sample of every weight tensor, so two checkpoints of one training run, or one checkpoint
in two dtypes, differ), the template that wrapped the prompts, the data root and, per task, a
fingerprint of the task's definition (data, prompt, scorer, generation length, options).
Resuming into a directory whose identity differs is refused with one line; ``overwrite`` removes
what fovea wrote there, and only that, and starts afresh. The checkpoint's path is recorded too,
for people: a moved checkpoint with the same fingerprint resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from ..config import to_dict
from ..errors import ConfigError

RUN_FILES = ("run.json", "results.json", "results.md", "radar.png")
TASK_FILES = ("samples*.jsonl", "errors*.jsonl", "judgements.jsonl")
_SAMPLE = 256
"""Values hashed from each end of every tensor: enough to tell trained states apart, cheap."""


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def model_fingerprint(model) -> str:
    """Config, every tensor's name/shape/dtype, and its first and last values."""
    h = hashlib.sha256(json.dumps(to_dict(model.config), sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        for piece in (flat[:_SAMPLE], flat[-_SAMPLE:]):
            h.update(piece.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_identity(model, specs, template_name: str | None, data_root, sampling: dict | None = None) -> dict:
    return {
        "model_fingerprint": model_fingerprint(model),
        "template": template_name,
        "sampling": sampling or None,
        "data_root": str(Path(data_root).expanduser().resolve()),
        "tasks": {s.name: _digest(dataclasses.asdict(s)) for s in specs},
    }


def check_resume(out: Path, identity: dict, overwrite: bool) -> dict:
    """Refuse `out` unless a run with `identity` may continue (or, with `overwrite`, replace) what
    is there; reads only. Returns the identity to record (tasks of an earlier run with the same
    model and settings are kept in it). `remove_own_files` then clears an overwritten run."""
    info = out / "run.json"
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return identity
    if not info.is_file():
        raise ConfigError(f"{out}: not empty and not a fovea eval run; choose another --out")
    if overwrite:
        return identity
    try:
        before = json.loads(info.read_text()).get("identity")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        before = None
    problem = _difference(before, identity)
    if problem:
        raise ConfigError(
            f"{out} holds another run ({problem}); pass --overwrite to start afresh or choose another --out"
        )
    return {**identity, "tasks": {**before["tasks"], **identity["tasks"]}}


def _difference(before: dict | None, now: dict) -> str | None:
    if not isinstance(before, dict) or not isinstance(before.get("tasks"), dict):
        return "written without a record of what made it"
    for key, what in (
        ("model_fingerprint", "model"),
        ("template", "template"),
        ("sampling", "sampling"),
        ("data_root", "data root"),
    ):
        if before.get(key) != now[key]:
            return f"{what} {before.get(key)!r}, this run {now[key]!r}"
    for task, digest in now["tasks"].items():
        if before["tasks"].get(task, digest) != digest:
            return f"task {task!r} was defined differently"
    return None


def remove_own_files(out: Path) -> None:
    """What fovea writes in a run directory (the run's files, each task folder's records), never
    another file: the folders themselves and anything else in them stay."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for folder in (p for p in out.iterdir() if p.is_dir()):
        for pattern in TASK_FILES:
            for path in folder.glob(pattern):
                path.unlink()
