"""`fovea.load`: any supported checkpoint directory or hub id -> an eval-mode VisionLanguageModel.

Layouts: fovea's own, transformers' ``LlavaNextForConditionalGeneration``, and the original
LLaVA-NeXT ``llava_*`` layout (including stage-1 ``mm_projector.bin`` outputs). The model is
built on the meta device (accelerate's ``init_empty_weights``: parameters take no memory,
buffers such as rotary tables are real), every weight file is checked from its headers, then
weights stream in file by file. Peak memory is about the checkpoint size, not twice it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import init_empty_weights
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoTokenizer

from ..errors import CheckpointError, ConfigError, library_error_line
from ..hub import resolve_directory
from ..model.lm_config import build_lm_config
from ..tensor_files import Source, fill, plan_load, weight_files
from . import fovea_format, hf_llava_next, llava_original

if TYPE_CHECKING:
    from ..model.config import VLMConfig

logger = logging.getLogger(__name__)


def read_raw_config(directory: Path) -> dict:
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{directory}: no config.json, not a model checkpoint")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file}: not valid JSON ({err})") from None


@dataclass
class Opened:
    """A checkpoint's config and tokenizer, with where each part's weights are (nothing loaded)."""

    directory: Path
    raw: dict
    config: VLMConfig
    tokenizer: object
    base: str | None = None
    tower: str | None = None
    """The tower named in place of an original config's ``mm_vision_tower``."""

    def sources(self, model) -> list[Source]:
        keys = set(model.state_dict())
        if fovea_format.is_fovea_checkpoint(self.raw):
            return [Source(weight_files(self.directory), lambda k: k)]
        if self.raw.get("model_type") == hf_llava_next.MODEL_TYPE:
            return [Source(weight_files(self.directory), hf_llava_next.key_map(keys))]
        return llava_original.sources(
            self.directory, self.raw, keys, model.tower.num_layers, self.base, self.tower
        )

    def attach(self, model) -> None:
        """Give the model's fuser the files it keeps beside its weights (vMLLM's text tokenizer):
        a fovea checkpoint holds them; an original one has them in its tower's directory."""
        if fovea_format.is_fovea_checkpoint(self.raw):
            model.connector.fuser.load_files(self.directory)
        elif llava_original.is_original(self.raw):
            llava_original.attach(model, self.raw, self.tower)

    def skeleton(self):
        """The model on the meta device: every name and shape, no memory."""
        from ..model.vlm import VisionLanguageModel

        try:
            with init_empty_weights():
                model = VisionLanguageModel(self.config, self.tokenizer)
        except ConfigError as err:  # transformers refused the config the checkpoint declares
            raise CheckpointError(f"{self.directory / 'config.json'}: {err}") from None
        if model.lm.config.tie_word_embeddings:
            model.lm.tie_weights()  # so the checkpoint need not (and usually does not) hold lm_head
        return model


def open_checkpoint(source: str | Path, *, base: str | None = None, tower: str | None = None) -> Opened:
    """Read a checkpoint's config and tokenizer in any supported layout (see `load`)."""
    directory = resolve_directory(source)
    raw = read_raw_config(directory)
    if fovea_format.is_fovea_checkpoint(raw):
        config = fovea_format.read_config(directory, raw)
        tokenizer = _tokenizer(directory, _lm_config(directory, config.lm))
    elif raw.get("model_type") == hf_llava_next.MODEL_TYPE:
        config = hf_llava_next.read_config(directory, raw)
        tokenizer = _tokenizer(directory, _lm_config(directory, config.lm))
        _adopt_chat_template(config, directory, tokenizer)
    elif llava_original.is_original(raw):
        lm = _lm_config(directory, llava_original.read_lm(directory, raw))
        tokenizer = _tokenizer(directory, lm, fallback=base or raw.get("_name_or_path"))
        config = llava_original.read_config(directory, raw, tokenizer, tower)
    else:
        kind = raw.get("model_type") or raw.get("format") or "unknown"
        raise CheckpointError(
            f"{directory / 'config.json'}: unsupported checkpoint layout {kind!r} (fovea, llava_next, llava_*)"
        )
    return Opened(directory, raw, config, tokenizer, base, tower)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""The dtype names the command line and ``--model_args`` accept."""


def dtype_from_name(name: str | None) -> torch.dtype | None:
    """``"bf16"`` -> torch.bfloat16; empty or None -> None (keep the checkpoint's dtype)."""
    if not name:
        return None
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


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


def _lm_config(directory: Path, fields: dict):
    try:
        return build_lm_config(fields)
    except ConfigError as err:
        raise CheckpointError(f"{directory / 'config.json'}: {err}") from None


def _tokenizer(directory: Path, lm_config, fallback: str | None = None):
    """The checkpoint's tokenizer (else `fallback`'s). `lm_config` is the LM's config, given so that
    transformers does not read config.json itself (a LLaVA model type it cannot name: a warning)."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    where = directory
    if not any((directory / n).is_file() for n in names) and fallback:
        where = resolve_directory(fallback)
    if not any((where / n).is_file() for n in names):
        logger.warning("%s has no tokenizer files; prepare/generate will need one", directory)
        return None
    try:
        return AutoTokenizer.from_pretrained(str(where), config=lm_config)
    except StrictDataclassError as err:  # AutoTokenizer reads config.json too and validates it
        raise CheckpointError(f"{where / 'config.json'}: {library_error_line(err)}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{where}: tokenizer files cannot be loaded ({str(err).splitlines()[0]})"
        ) from None


def _adopt_chat_template(config: VLMConfig, directory: Path, tokenizer) -> None:
    """A transformers checkpoint's own Jinja template becomes the model's default; when one of
    fovea's templates renders exactly the same prompts, that one is named (training labels work).
    (Original LLaVA layouts are left alone: their tokenizer's template is the base LM's, not the
    one the model was trained with.)"""
    from ..model.checkpoint_template import JinjaTemplate, read_chat_template, recognise

    source = read_chat_template(directory)
    if source is None:
        return
    config.chat_template = source
    if tokenizer is not None and config.template is None:
        config.template = recognise(JinjaTemplate(source, tokenizer, config.image_token))
        if config.template:
            logger.info("%s: its chat template renders as fovea's %r", directory, config.template)


def _check_filled(model, directory: Path) -> None:
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_meta:
            raise CheckpointError(f"{directory}: no weights for {name!r}")
