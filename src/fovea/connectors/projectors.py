"""Projectors: tower features -> language-model embeddings, (V, N, D_in) -> (V, N, D_lm).

A registry of projector types, each with the names it answers to and its builder. Names follow
LLaVA's ``mm_projector_type``: ``linear``, ``mlp{N}x_gelu`` (N linear layers with GELU between
them; ``mlp2x_gelu`` is LLaVA-1.5/NeXT's) and ``identity``. Module layout is an ``nn.Sequential``
so an MLP's weights are ``0.*``, ``2.*``, ... exactly as LLaVA's ``mm_projector.0`` /
``mm_projector.2``. A new type is one `PROJECTORS.add` line with its pattern and builder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from transformers.activations import ACT2FN

from ..errors import ConfigError
from ..registry import Registry


@dataclass(frozen=True)
class ProjectorType:
    pattern: str
    """A regular expression over ``mm_projector_type`` names (its groups go to `build`)."""
    build: Callable[[re.Match, int, int, bool, str], nn.Module]
    """(name match, D_in, D_lm, bias, activation) -> the module."""
    example: str
    """A name it answers to (tests build every registered type from it)."""


def _identity(match: re.Match, d_in: int, d_out: int, bias: bool, act: str) -> nn.Module:
    if d_in != d_out:
        raise ConfigError(f"projector 'identity' needs equal widths, got tower {d_in} vs LM {d_out}")
    return nn.Identity()


def _linear(match: re.Match, d_in: int, d_out: int, bias: bool, act: str) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d_out, bias=bias))


def _mlp(match: re.Match, d_in: int, d_out: int, bias: bool, act: str) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(d_in, d_out, bias=bias)]
    for _ in range(int(match.group(1)) - 1):
        layers += [ACT2FN[act], nn.Linear(d_out, d_out, bias=bias)]
    return nn.Sequential(*layers)


PROJECTORS: Registry[ProjectorType] = Registry("projector")
PROJECTORS.add("linear", ProjectorType("linear", _linear, "linear"), "one Linear(D_in -> D_lm)")
PROJECTORS.add(
    "mlp{N}x_gelu",
    ProjectorType(r"mlp([1-9]\d*)x_gelu", _mlp, "mlp2x_gelu"),
    "N Linear layers with an activation between (mlp2x_gelu = LLaVA-NeXT)",
)
PROJECTORS.add(
    "identity", ProjectorType("identity", _identity, "identity"), "no projection (D_in must equal D_lm)"
)


def projector_type(kind: str) -> tuple[ProjectorType, re.Match]:
    """The registered type whose pattern `kind` matches, with the match."""
    for name in PROJECTORS:
        entry = PROJECTORS.get(name)
        match = re.fullmatch(entry.pattern, kind)
        if match:
            return entry, match
    raise ConfigError(
        f"unknown projector {kind!r}; expected one of {', '.join(PROJECTORS)} (e.g. mlp2x_gelu)"
    )


def build_projector(kind: str, d_in: int, d_out: int, *, bias: bool = True, act: str = "gelu") -> nn.Module:
    """A projector of declared type `kind` (see PROJECTORS)."""
    entry, match = projector_type(kind)
    return entry.build(match, d_in, d_out, bias, act)
