"""Projectors: tower features -> language-model embeddings, (V, N, D_in) -> (V, N, D_lm).

Types follow LLaVA's ``mm_projector_type`` names: ``linear``, ``mlp{N}x_gelu`` (N linear layers
with GELU between them; ``mlp2x_gelu`` is LLaVA-1.5/NeXT's) and ``identity``. Module layout is an
``nn.Sequential`` so an MLP's weights are ``0.*``, ``2.*``, ... exactly as LLaVA's
``mm_projector.0`` / ``mm_projector.2``.
"""

from __future__ import annotations

import re

from torch import nn
from transformers.activations import ACT2FN

from ..errors import ConfigError

_MLP = re.compile(r"^mlp(\d+)x_gelu$")

PROJECTOR_TYPES = {
    "linear": "one Linear(D_in -> D_lm)",
    "mlp{N}x_gelu": "N Linear layers with an activation between (mlp2x_gelu = LLaVA-NeXT)",
    "identity": "no projection (D_in must equal D_lm)",
}


def build_projector(kind: str, d_in: int, d_out: int, *, bias: bool = True, act: str = "gelu") -> nn.Module:
    """A projector of declared type `kind` (see PROJECTOR_TYPES)."""
    if kind == "identity":
        if d_in != d_out:
            raise ConfigError(f"projector 'identity' needs equal widths, got tower {d_in} vs LM {d_out}")
        return nn.Identity()
    if kind == "linear":
        return nn.Sequential(nn.Linear(d_in, d_out, bias=bias))
    match = _MLP.match(kind)
    if match is None or int(match.group(1)) < 1:
        raise ConfigError(
            f"unknown projector {kind!r}; expected linear, identity or mlp{{N}}x_gelu (e.g. mlp2x_gelu)"
        )
    layers: list[nn.Module] = [nn.Linear(d_in, d_out, bias=bias)]
    for _ in range(int(match.group(1)) - 1):
        layers += [ACT2FN[act], nn.Linear(d_out, d_out, bias=bias)]
    return nn.Sequential(*layers)
