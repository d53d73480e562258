"""Safetensors I/O shared by every checkpoint layout: sharded writes and validated, streaming reads.

Reading is two passes. The first reads only headers: every listed shard must exist and parse, and
every key the model needs must be present with the right shape — so a broken checkpoint fails
with one line naming the file or key *before* any weight is touched (never a half-loaded model).
The second pass fills a model built on the meta device tensor by tensor, so peak memory is the
model once plus one tensor, not twice the model. ``.bin`` files (older checkpoints, LLaVA's
``mm_projector.bin``) are read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .atomic import write_atomic
from .errors import CheckpointError

INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
SINGLE = "model.safetensors"

KeyMap = Callable[[str], "str | None"]
"""Checkpoint key -> model key, or None to ignore the tensor."""


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory: safetensors (via the index when sharded), or
    ``*.bin`` files when a checkpoint has no safetensors."""
    for name in (INDEX, BIN_INDEX):
        index = directory / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CheckpointError(f"{index}: not a valid weights index ({err})") from None
            files = [directory / f for f in dict.fromkeys(weight_map.values())]
            for file in files:
                if not file.is_file():
                    raise CheckpointError(f"{file}: shard listed in {name} is missing")
            return files
    # training_args.bin and optimizer states are pickles of other things: only model weights count
    found = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not found:
        raise CheckpointError(f"{directory}: no *.safetensors (or pytorch_model*.bin) weights found")
    return found


class TensorFile:
    """One weight file, read lazily: safetensors through safe_open, ``.bin`` through
    ``torch.load(weights_only=True, mmap=True)`` (never unpickling arbitrary objects)."""

    def __init__(self, path: Path):
        self.path = path
        self._bin: dict | None = None

    def __enter__(self) -> TensorFile:
        try:
            if self.path.suffix == ".bin":
                self._bin = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
                if not isinstance(self._bin, dict):
                    raise CheckpointError(
                        f"{self.path}: expected a state dict, found {type(self._bin).__name__}"
                    )
            else:
                self._handle = safe_open(self.path, framework="pt")
        except SafetensorError as err:
            raise CheckpointError(f"{self.path}: unreadable safetensors file ({err})") from None
        except (RuntimeError, EOFError, pickle.UnpicklingError, OSError) as err:
            raise CheckpointError(f"{self.path}: unreadable weights file ({_first_line(err)})") from None
        return self

    def __exit__(self, *exc) -> None:
        self._bin = None
        self._handle = None

    def keys(self) -> list[str]:
        return list(self._bin) if self._bin is not None else list(self._handle.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        if self._bin is not None:
            return tuple(self._bin[key].shape)
        return tuple(self._handle.get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._bin[key] if self._bin is not None else self._handle.get_tensor(key)
        except SafetensorError as err:
            raise CheckpointError(f"{self.path}: unreadable tensor {key!r} ({err})") from None


@dataclass
class Source:
    """Weight files and how their keys map onto the model (several sources may fill one model)."""

    files: list[Path]
    key_map: KeyMap


@dataclass
class _Plan:
    file: Path
    source_key: str
    target: str


def plan_load(model: nn.Module, sources: list[Source], optional: set[str] = frozenset()) -> list[_Plan]:
    """Header-only check of every source against `model`; returns what to load from where.

    Keys that alias an earlier tensor (tied input/output embeddings) may be absent, as may
    `optional` ones (left at their initial value by the caller's choice).
    """
    state = model.state_dict(keep_vars=True)
    expected = {name: t.shape for name, t in state.items()}
    first_of: dict[int, str] = {}
    tied = {name for name, t in state.items() if first_of.setdefault(id(t), name) != name}
    plans, seen = [], set()
    for source in sources:
        for file in source.files:
            with TensorFile(file) as handle:
                for key in handle.keys():
                    target = source.key_map(key)
                    if target is None:
                        continue
                    if target not in expected:
                        raise CheckpointError(
                            f"{file}: tensor {key!r} has no place in the model"
                            + ("" if target == key else f" (as {target!r})")
                            + _layer_hint(target)
                        )
                    shape = handle.shape(key)
                    if shape != tuple(expected[target]):
                        raise CheckpointError(
                            f"{file}: tensor {key!r} has shape {list(shape)}, the model expects "
                            f"{list(expected[target])} for {target!r}"
                        )
                    plans.append(_Plan(file, key, target))
                    seen.add(target)
    missing = [k for k in expected if k not in seen and k not in tied and k not in optional]
    if missing:
        where = ", ".join(dict.fromkeys(str(f.parent) for source in sources for f in source.files))
        raise CheckpointError(
            f"{where or 'checkpoint'}: lacks {len(missing)} tensors the model needs, e.g. {missing[0]!r}"
            + _layer_hint(missing[0])
        )
    return plans


_LAYER = re.compile(r"^(lm|tower)\.(?:.*\.)?layers\.\d+\.")


def _layer_hint(target: str) -> str:
    """A layer tensor too many or too few almost always means config.json's layer count is not
    the weights' (an edited or mixed-up config): say which key to look at."""
    found = _LAYER.match(target)
    if found is None:
        return ""
    part = "language model" if found[1] == "lm" else "vision tower"
    return f"; does config.json's num_hidden_layers for the {part} match the weights?"


def read_planned(plans: list[_Plan], dtype: torch.dtype | None) -> Iterator[tuple[_Plan, torch.Tensor]]:
    """(plan, tensor) for every plan, reading each file once and casting floats to `dtype`."""
    by_file: dict[Path, list[_Plan]] = {}
    for plan in plans:
        by_file.setdefault(plan.file, []).append(plan)
    for file, items in by_file.items():
        with TensorFile(file) as handle:
            for plan in items:
                tensor = handle.get(plan.source_key)
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                yield plan, tensor


def fill(model: nn.Module, plans: list[_Plan], dtype: torch.dtype | None, device: str | torch.device) -> None:
    """Load the planned tensors into `model` (built on the meta device), one file at a time."""
    for plan, tensor in read_planned(plans, dtype):
        tensor = tensor.to(device)
        if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
            # safetensors hands out tensors at any byte offset; oneDNN/MKL pick another kernel for
            # unaligned memory, so a loaded model would differ from the saved one in the last bit
            tensor = tensor.clone()
        _assign(model, plan.target, tensor)


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(tensor, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = tensor


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


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
    write_atomic(path, write)
