"""Connector = layer selection -> fuser -> projector: tower output to visual tokens.

The connector owns everything between the tower and the language model, and it can say how many
tokens it emits for a given patch grid *before* it runs (``out_grid``), which is what lets the
tokenizer insert exactly the right number of placeholders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..towers.base import FeatureLevel, TowerOutput
from .fusers import FuserInput, build_fuser, fuser_fields
from .projectors import build_projector


@dataclass(kw_only=True)
class ConnectorConfig:
    layers: list[int] = field(default_factory=lambda: [-2])
    """Tower hidden-state indices (transformers order: 0 = embeddings); several are fused."""
    keep_cls: bool = False
    """Keep the CLS token (LLaVA ``cls_patch``); only for towers that have one."""
    fuser: str | dict = "concat"
    """The fuser: a registered type name, or ``{type: NAME, ...its own settings}`` (see
    connectors/fusers.py); stored normalised as the mapping, every key checked."""
    projector: str = "mlp2x_gelu"
    projector_bias: bool = True
    projector_act: str = "gelu"

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("layers must name at least one tower layer")
        self.fuser = fuser_fields(self.fuser)

    @property
    def fuser_type(self) -> str:
        return self.fuser["type"]


class Connector(nn.Module):
    """TowerOutput -> (V, N', D_lm) visual tokens per view."""

    def __init__(self, config: ConnectorConfig, *, levels: list[FeatureLevel], lm_width: int):
        """`levels`: the tower's feature levels (`VisionTower.feature_levels()`), one per hidden state."""
        super().__init__()
        self.config = config
        count = len(levels)
        for index in config.layers:
            if not -count <= index < count:
                raise ConfigError(f"connector.layers: {index} is outside the tower's {count} hidden states")
        # hidden states are indexed as transformers returns them for the *full* tower: 0..L
        self.layer_index = [i if i >= 0 else count + i for i in config.layers]
        self.levels = [levels[i] for i in self.layer_index]
        if config.keep_cls and not all(level.prefix_tokens for level in self.levels):
            raise ConfigError("connector.keep_cls is set but the tower has no CLS token")
        self.fuser = build_fuser(config.fuser, [level.width for level in self.levels])
        self.projector = build_projector(
            config.projector,
            self.fuser.out_width(),
            lm_width,
            bias=config.projector_bias,
            act=config.projector_act,
        )

    def out_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of visual tokens per view for a (height, width) pixel input (CLS not
        counted), from the selected levels' grids: known before anything runs."""
        return self.fuser.out_grid([level.grid(*size) for level in self.levels])

    def tower_depth(self) -> int:
        """Tower blocks that must run: the deepest selected hidden state (0 = embeddings only)."""
        return max(self.layer_index)

    def extra_tokens(self) -> int:
        """Tokens per view outside the grid (the kept CLS)."""
        return 1 if self.config.keep_cls else 0

    def forward(
        self,
        tower_out: TowerOutput,
        pixels: tuple[int, int],
        samples: torch.Tensor | None = None,
        questions: list[str] | None = None,
    ) -> torch.Tensor:
        """Visual tokens (V, N', D_lm) of the views of `pixels` (height, width) size; `samples`
        (V,) is the batch row each view belongs to, `questions` one text per row."""
        if self.fuser.reads_question and questions is None:
            raise ConfigError(
                f"the {self.config.fuser_type} fuser conditions on the question: pass the inputs "
                "`prepare`/`prepare_chat` build (their `questions`), or questions=[...] per row"
            )
        skip = 0 if self.config.keep_cls else tower_out.num_prefix_tokens
        states = [tower_out.hidden_states[i] for i in self.layer_index]
        inputs = FuserInput(
            layers=[state[:, skip:] for state in states],  # each (V, N, D)
            grids=[level.grid(*pixels) for level in self.levels],
            prefix=[state[:, :skip] for state in states] if skip else None,
            samples=samples,
            questions=questions,
        )
        fused = self.fuser(inputs)
        return self.projector(fused)
