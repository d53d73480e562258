"""Safetensors I/O shared by every checkpoint layout: sharded writes and validated, streaming reads.

Reading is two passes. The first reads only headers: every listed shard must exist and parse, and
every key the model needs must be present with the right shape — so a broken checkpoint fails
with one line naming the file or key *before* any weight is touched (never a half-loaded model).
The second pass fills a model built on the meta device tensor by tensor, so peak memory is the
model once plus one tensor, not twice the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

KeyMap = Callable[[str], "str | None"]
"""Checkpoint key -> model key, or None to ignore the tensor."""


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (from its index when sharded)."""
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index}: not a valid safetensors index ({err})") from None
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{file}: shard listed in {INDEX} is missing")
        return files
    single = sorted(directory.glob("*.safetensors"))
    if not single:
        raise CheckpointError(f"{directory}: no *.safetensors weights found")
    return single


@dataclass
class _Plan:
    file: Path
    source_key: str
    target: str


def plan_load(model: nn.Module, files: list[Path], key_map: KeyMap) -> list[_Plan]:
    """Header-only check of `files` against `model`; returns what to load from where.

    Keys that alias an earlier tensor (tied input/output embeddings) may be absent.
    """
    state = model.state_dict(keep_vars=True)
    expected = {name: t.shape for name, t in state.items()}
    first_of: dict[int, str] = {}
    optional = {name for name, t in state.items() if first_of.setdefault(id(t), name) != name}
    plans, seen = [], set()
    for file in files:
        try:
            with safe_open(file, framework="pt") as handle:
                for key in handle.keys():
                    target = key_map(key)
                    if target is None:
                        continue
                    if target not in expected:
                        raise CheckpointError(
                            f"{file.name}: tensor {key!r} has no place in the model (as {target!r})"
                        )
                    shape = tuple(handle.get_slice(key).get_shape())
                    if shape != tuple(expected[target]):
                        raise CheckpointError(
                            f"{file.name}: tensor {key!r} has shape {list(shape)}, the model expects "
                            f"{list(expected[target])} for {target!r}"
                        )
                    plans.append(_Plan(file, key, target))
                    seen.add(target)
        except SafetensorError as err:
            raise CheckpointError(f"{file}: unreadable safetensors file ({err})") from None
    missing = [k for k in expected if k not in seen and k not in optional]
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} tensors the model needs, e.g. {missing[0]!r}")
    return plans


def fill(model: nn.Module, plans: list[_Plan], dtype: torch.dtype | None, device: str | torch.device) -> None:
    """Load the planned tensors into `model` (built on the meta device), one shard at a time."""
    by_file: dict[Path, list[_Plan]] = {}
    for plan in plans:
        by_file.setdefault(plan.file, []).append(plan)
    for file, items in by_file.items():
        try:
            with safe_open(file, framework="pt", device=str(device)) as handle:
                for plan in items:
                    tensor = handle.get_tensor(plan.source_key)
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    _assign(model, plan.target, tensor)
        except SafetensorError as err:
            raise CheckpointError(f"{file}: unreadable safetensors file ({err})") from None


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(tensor, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = tensor


def save_state(state: dict[str, torch.Tensor], directory: Path, max_shard_size: int) -> None:
    """Write `state` as safetensors shards (+ index when more than one); each file atomically."""
    state = _unshare(state)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    names = (
        [SINGLE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for name, shard in zip(names, shards):
        _atomic(
            directory / name, lambda tmp, shard=shard: save_file(shard, str(tmp), metadata={"format": "pt"})
        )
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {
            "metadata": {"total_size": total},
            "weight_map": {k: n for n, s in zip(names, shards) for k in s},
        }
        _atomic(directory / INDEX, lambda tmp: tmp.write_text(json.dumps(index, indent=2)))


def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop later keys that alias an earlier tensor (tied embeddings); loading re-ties them."""
    out, seen = {}, set()
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen:
            continue
        seen.add(ident)
        out[key] = tensor.detach().contiguous().cpu()
    return out


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
