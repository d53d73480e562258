"""Fusers: how the selected tower layers become one feature map before the projector.

A fuser receives the selected hidden states (patch tokens only, CLS handled by the connector),
the patch grid and, for question-aware fusers such as vMLLM's, the text context. It returns one
(V, N', D') map and says, before running, its output width and grid — so token counts are known
when the prompt is tokenized. The default ``concat`` is LLaVA's multi-layer selection (layers
concatenated on channels); MMFuser, vMLLM and ConvLLaVA's stage fusion register here later.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..registry import Registry


@dataclass
class FuserInput:
    layers: list[torch.Tensor]
    """Selected hidden states, each (V, N, D), in the order the config lists them."""
    grid: tuple[int, int]
    """(rows, cols) of the patch grid, N = rows * cols (plus CLS when the connector keeps it)."""
    context: torch.Tensor | None = None
    """Optional text context, e.g. question embeddings for vMLLM-style gating."""


class Fuser(nn.Module):
    """Contract: selected layers -> one (V, N', out_width) map with a known output grid."""

    def out_width(self) -> int:
        raise NotImplementedError

    def out_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        return grid

    def forward(self, inputs: FuserInput) -> torch.Tensor:
        raise NotImplementedError


FUSERS: Registry[type[Fuser]] = Registry("fuser")


@FUSERS.register("concat", "selected layers concatenated on channels (LLaVA multi-layer selection)")
class ConcatFuser(Fuser):
    def __init__(self, width: int, num_layers: int):
        super().__init__()
        self.width, self.num_layers = width, num_layers

    def out_width(self) -> int:
        return self.width * self.num_layers

    def forward(self, inputs: FuserInput) -> torch.Tensor:
        if len(inputs.layers) == 1:
            return inputs.layers[0]
        return torch.cat(inputs.layers, dim=-1)  # L x (V, N, D) -> (V, N, L*D)
