"""`fovea.load`: any supported checkpoint directory or hub id -> an eval-mode VisionLanguageModel.

Layouts are a registry (checkpoints/layouts.py): fovea's own, transformers'
``LlavaNextForConditionalGeneration``, and the original LLaVA-NeXT ``llava_*`` layout (including
stage-1 ``mm_projector.bin`` outputs, MMFuser, vMLLM and ConvLLaVA). The model is
built on the meta device (accelerate's ``init_empty_weights``: parameters take no memory,
buffers such as rotary tables are real), every weight file is checked from its headers, then
weights stream in file by file. Peak memory is about the checkpoint size, not twice it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..hub import resolve_directory
from ..tensor_files import fill, plan_load
from .layouts import layout_of
from .opened import Opened

logger = logging.getLogger(__name__)


def read_raw_config(directory: Path) -> dict:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{directory}: no config.json, not a model checkpoint")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file}: not valid JSON ({err})") from None


def open_checkpoint(source: str | Path, *, base: str | None = None, tower: str | None = None) -> Opened:
    """Read a checkpoint's config and tokenizer in any registered layout (see `load`)."""
    directory = resolve_directory(source)
    raw = read_raw_config(directory)
    layout = layout_of(directory, raw)
    config, tokenizer = layout.read(directory, raw, base, tower)
    return Opened(directory, raw, config, tokenizer, layout, base, tower)


def load(
    source: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    base: str | None = None,
    tower: str | None = None,
):
    """Load a checkpoint of any supported layout; returns the model in eval mode.

    `base`: the base LM for a stage-1 LLaVA output that holds only ``mm_projector.bin``;
    `tower`: overrides the tower named by an original LLaVA-NeXT config (a directory or preset).
    """
    opened = open_checkpoint(source, base=base, tower=tower)
    model = opened.skeleton()
    fill(model, plan_load(model, opened.sources(model)), dtype, device)
    opened.attach(model)
    if model.lm.config.tie_word_embeddings:
        model.lm.tie_weights()
    _check_filled(model, opened.directory)
    model.to(device)
    model.checkpoint_dir = opened.directory  # where it came from (eval runs record it)
    return model.eval()


def _check_filled(model, directory: Path) -> None:
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_meta:
            raise CheckpointError(f"{directory}: no weights for {name!r}")
