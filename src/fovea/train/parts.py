"""Which parameters train, at which learning rate: stages name *parts*, never parameter names.

Parts: ``tower``, ``tower.embeddings``, ``tower.layers.A-B`` (a ViT's blocks A..B inclusive, or
one ``tower.layers.N``), ``tower.stages.A-B`` (a hierarchical tower's stages, each with its own
downsampling layer: the tower's family says which it has, see `TowerFamily.blocks`), ``connector`` (or its ``connector.fuser`` and ``connector.projector`` apart,
e.g. MMFuser's fuser at 1e-4 beside the MLP at 1e-3; ``connector.fuser.NAME``, one sub-module of
the fuser, e.g. vMLLM's ``enhance``), ``lm``, ``lm.embeddings`` (input and output
embeddings), ``newline``, and a segmenting model's ``seg`` (or ``seg.sam.prompt_encoder``,
``seg.sam.mask_decoder``, ``seg.text2sam`` apart: MLCD-Seg trains them at 8e-4, 8e-4 and 3e-4; SAM's
image encoder never trains). A parameter takes the learning rate of the most specific part that contains it;
parameters of no listed part are frozen. `describe` gives the table the run logs.

Optimizer groups follow common practice: no weight decay on biases and normalisation weights
(any parameter with fewer than two dimensions). The schedule is linear warmup then cosine decay
to zero, applied to every group's own learning rate.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

PARTS = (
    "tower",
    "tower.embeddings",
    "tower.layers.A-B",
    "tower.stages.A-B",
    "connector",
    "connector.fuser",
    "connector.fuser.NAME",
    "connector.projector",
    "lm",
    "lm.embeddings",
    "newline",
    "seg",
    "seg.sam.prompt_encoder",
    "seg.sam.mask_decoder",
    "seg.text2sam",
)
"""What a stage may train (``tower.layers.A-B``: blocks A..B, or ``tower.layers.N``)."""
_BLOCK_RANGE = re.compile(r"^tower\.(layers|stages)\.(\d+)(?:-(\d+))?$")
_FUSER_PART = re.compile(r"^connector\.fuser\.[A-Za-z_]\w*$")


@dataclass(frozen=True)
class PartIndex:
    """What naming parts needs to know about one model: its LM embedding parameters and where its
    tower's blocks are (``unit`` "layers" or "stages", parameter names under ``prefix``)."""

    embeddings: frozenset[str] = frozenset()
    unit: str | None = None
    prefix: str | None = None
    frozen: frozenset[str] = frozenset()
    """Parameters that never train (a fuser's frozen text tower), whatever the parts say."""

    @classmethod
    def of(cls, model) -> PartIndex:
        path, _ = model.tower.blocks()
        frozen = {id(p) for module in model.connector.fuser.frozen_modules() for p in module.parameters()}
        if getattr(model, "seg", None) is not None:  # SAM's image encoder is frozen (MLCD-Seg)
            frozen |= {id(p) for p in model.seg.sam.vision_encoder.parameters()}
        names = frozenset(n for n, p in model.named_parameters() if id(p) in frozen)
        return cls(
            frozenset(lm_embedding_names(model)), path.rsplit(".", 1)[-1], f"tower.model.{path}.", names
        )

    def block(self, name: str) -> int | None:
        """The tower block (layer or stage) parameter `name` lies in, or None."""
        if self.prefix is None or not name.startswith(self.prefix):
            return None
        return int(name[len(self.prefix) :].split(".", 1)[0])


def lm_embedding_names(model) -> set[str]:
    names = set()
    for module in (model.lm.get_input_embeddings(), model.lm.get_output_embeddings()):
        if module is not None:
            names.update(n for n, p in model.named_parameters() if any(p is q for q in module.parameters()))
    return names


def block_unit_mismatch(part: str, index: PartIndex) -> str | None:
    """Why a ``tower.stages.N`` part cannot apply to a tower with layers (or the reverse), or None."""
    match = _BLOCK_RANGE.match(part)
    if match is None or index.unit is None or match.group(1) == index.unit:
        return None
    return f"this tower's blocks are its {index.unit} (tower.{index.unit}.A-B), not {match.group(1)}"


def part_of(name: str, part: str, index: PartIndex) -> bool:
    """Does parameter `name` belong to `part`?"""
    if part == "tower":
        return name.startswith("tower.")
    if part == "tower.embeddings":
        return name.startswith("tower.") and ".embeddings." in name
    match = _BLOCK_RANGE.match(part)
    if match:
        first, last = int(match.group(2)), int(match.group(3) or match.group(2))
        block = index.block(name) if match.group(1) == index.unit else None
        return block is not None and first <= block <= last
    if part == "connector":
        return name.startswith("connector.")
    if part in ("connector.fuser", "connector.projector") or _FUSER_PART.match(part):
        return name.startswith(f"{part}.")
    if part == "lm":
        return name.startswith("lm.")
    if part == "lm.embeddings":
        return name in index.embeddings
    if part == "newline":
        return name == "image_newline"
    if part in ("seg", "seg.sam.prompt_encoder", "seg.sam.mask_decoder", "seg.text2sam"):
        return name.startswith(f"{part}.")
    raise ConfigError(f"unknown part {part!r}; parts are {', '.join(PARTS)}")


def assign(model: nn.Module, train: dict[str, float], lora_lr: float | None = None) -> dict[str, float]:
    """Parameter name -> learning rate for every trainable parameter; freezes all others.

    With LoRA (`lora_lr` set), a part covering adapted weights trains only their adapters, at
    the part's rate; adapters of parts not listed train at `lora_lr`.
    """
    index = PartIndex.of(model)
    order = sorted(train, key=lambda p: p.count("."))  # later = more specific (deeper), wins
    adapted = {n.split(".lora_")[0] for n, _ in model.named_parameters() if ".lora_" in n}
    rates: dict[str, float] = {}
    for name, param in model.named_parameters():
        lr = None
        for part in order:
            if part_of(name, part, index):
                lr = train[part]
        if name in index.frozen:
            lr = None
        elif lora_lr is not None and ".lora_" in name:
            lr = lr if lr is not None else lora_lr
        elif lora_lr is not None and name.rsplit(".", 1)[0].removesuffix(".base_layer") in adapted:
            lr = None  # an adapted weight stays frozen: its adapters learn instead
        param.requires_grad_(lr is not None and lr > 0)
        if param.requires_grad:
            rates[name] = lr
    if not rates:
        raise ConfigError(f"stage trains nothing: parts {sorted(train)} match no parameter with lr > 0")
    return rates


def describe(model: nn.Module, rates: dict[str, float]) -> list[tuple[str, int, int, str]]:
    """(part, trainable params, total params, learning rates) per top-level part, for the log."""
    rows = []
    for top in ("tower", "connector", "lm", "image_newline"):
        params = [(n, p) for n, p in model.named_parameters() if n.split(".")[0] == top]
        if not params:
            continue
        trainable = sum(p.numel() for n, p in params if n in rates)
        lrs = sorted({rates[n] for n, _ in params if n in rates})
        rows.append(
            (
                top,
                trainable,
                sum(p.numel() for _, p in params),
                ", ".join(f"{lr:g}" for lr in lrs) or "frozen",
            )
        )
    return rows


def param_groups(model: nn.Module, rates: dict[str, float], weight_decay: float) -> list[dict]:
    groups: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        if name in rates:
            decay = weight_decay > 0 and param.ndim >= 2
            groups.setdefault((rates[name], decay), []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": weight_decay if decay else 0.0}
        for (lr, decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1]))
    ]


def warmup_cosine(total_steps: int, warmup_ratio: float):
    """LambdaLR factor: linear warmup over ceil(ratio * total) steps, then cosine to zero."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def make_optimizer(
    model: nn.Module, rates: dict[str, float], weight_decay: float, total_steps: int, warmup_ratio: float
):
    optimizer = torch.optim.AdamW(param_groups(model, rates, weight_decay), betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_ratio))
    return optimizer, scheduler
