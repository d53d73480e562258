"""Fusers: how the selected tower layers become one feature map before the projector.

A fuser receives the selected hidden states (patch tokens only, CLS handled by the connector),
each level's grid, which sample every view belongs to and, for question-aware fusers such as
vMLLM's (``reads_question``), each sample's question text. It returns one
(V, N', D') map and says, before running, its output width and grid — so token counts are known
when the prompt is tokenized. The default ``concat`` is LLaVA's multi-layer selection (layers
concatenated on channels); MMFuser, vMLLM and ConvLLaVA's stage fusion register here later.

Each fuser owns its config (as torchtitan's components do): a dataclass subclassing `FuserConfig`,
named by the fuser's ``config_class``, selected by its declared ``type``. A recipe writes
``connector: {fuser: {type: mmfuser, heads: 16}}`` (or just ``fuser: concat``); its keys are checked
as strictly as every other config section.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import from_dict, to_dict
from ..errors import ConfigError
from ..registry import Registry


@dataclass(kw_only=True)
class FuserConfig:
    """The base of every fuser's config: its registered type."""

    type: str = "concat"


@dataclass
class FuserInput:
    layers: list[torch.Tensor]
    """Selected hidden states, each (V, N, D), in the order the config lists them."""
    grids: list[tuple[int, int]]
    """(rows, cols) of each selected level, N = rows * cols (plus CLS when the connector keeps it)."""
    samples: torch.Tensor | None = None
    """(V,) the batch row (sample) each view belongs to, so a question-aware fuser conditions
    every view on its own sample's question."""
    prefix: list[torch.Tensor] | None = None
    """Each selected layer's tokens before its grid (V, P, D) — the CLS token — when the tower has
    them and the connector does not keep them in `layers` (vMLLM reads the CLS as an image vector)."""
    questions: list[str] | None = None
    """One question text per batch row (see `fovea.model.prompting.question_text`); given to
    every fuser, read by those with ``reads_question``."""


class Fuser(nn.Module):
    """Contract: selected layers -> one (V, N', out_width) map with a known output grid. Built as
    ``cls(config, widths)`` (each selected level's width); ``config_class`` is its settings' dataclass."""

    config_class: type[FuserConfig] = FuserConfig
    reads_question: bool = False
    """Do its visual tokens depend on the question? Then every caller must pass the questions,
    and a chat session cannot reuse image tokens computed for an earlier question."""

    def out_width(self) -> int:
        raise NotImplementedError

    # -- what a fuser with pretrained parts of its own (vMLLM's text tower) overrides ----------

    @classmethod
    def complete_config(cls, config: FuserConfig, source: str | None) -> FuserConfig:
        """The config with what a recipe may leave out filled from the tower's pretrained
        `source` (hub id or directory; None: a random tower)."""
        return config

    def load_pretrained(self, source: str) -> None:
        """Fill the fuser's own pretrained parts from the tower's `source` (none by default)."""

    def init_random(self) -> None:
        """Give a fuser built without a pretrained tower (tiny models) what it needs besides its
        random weights (none by default)."""

    def frozen_modules(self) -> list[nn.Module]:
        """Sub-modules that never train, whatever a stage's parts say (none by default)."""
        return []

    def save_files(self, directory) -> None:
        """Files the fuser keeps beside the weights of a fovea checkpoint (none by default)."""

    def load_files(self, directory) -> None:
        """Read what `save_files` wrote (none by default)."""

    def out_grid(self, grids: list[tuple[int, int]]) -> tuple[int, int]:
        """(rows, cols) of the output for the selected levels' grids (default: the last one's)."""
        return grids[-1]

    def forward(self, inputs: FuserInput) -> torch.Tensor:
        raise NotImplementedError


FUSERS: Registry[type[Fuser]] = Registry("fuser")


def fuser_config(value: str | dict | FuserConfig) -> FuserConfig:
    """A fuser's config from its type name or a mapping with ``type`` (strict keys)."""
    if isinstance(value, FuserConfig):
        return value
    fields = {"type": value} if isinstance(value, str) else dict(value) if isinstance(value, dict) else None
    if fields is None:
        raise ConfigError(f"fuser: expected a type name or a mapping with 'type', got {value!r}")
    name = fields.setdefault("type", "concat")
    cls = FUSERS.get(name).config_class  # an unknown type raises with did-you-mean
    return from_dict(cls, fields, "fuser")


def fuser_fields(value: str | dict | FuserConfig) -> dict:
    """The normalised, checked mapping a ConnectorConfig stores (and config.json holds)."""
    return to_dict(fuser_config(value))


def build_fuser(value: str | dict | FuserConfig, widths: list[int]) -> Fuser:
    config = fuser_config(value)
    return FUSERS.get(config.type)(config, widths)


@FUSERS.register("concat", "selected layers concatenated on channels (LLaVA multi-layer selection)")
class ConcatFuser(Fuser):
    def __init__(self, config: FuserConfig, widths: list[int]):
        super().__init__()
        self.config, self.widths = config, widths

    def out_width(self) -> int:
        return sum(self.widths)

    def out_grid(self, grids: list[tuple[int, int]]) -> tuple[int, int]:
        if len(set(grids)) > 1:
            raise ConfigError(f"fuser concat: the selected levels have different grids {sorted(set(grids))}")
        return grids[0]

    def forward(self, inputs: FuserInput) -> torch.Tensor:
        if len(inputs.layers) == 1:
            return inputs.layers[0]
        return torch.cat(inputs.layers, dim=-1)  # L x (V, N, D) -> (V, N, L*D)
