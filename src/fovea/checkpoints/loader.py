"""`fovea.load`: any supported checkpoint directory or hub id -> an eval-mode VisionLanguageModel.

The model is built on the meta device (accelerate's ``init_empty_weights``: parameters take no
memory, buffers such as rotary tables are real), the checkpoint is checked from its headers, then
weights stream in shard by shard. Peak memory is about the checkpoint size, not twice it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import AutoTokenizer

from ..errors import CheckpointError
from . import fovea_format, hf_llava_next
from .weights import fill, plan_load, weight_files

logger = logging.getLogger(__name__)

_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def resolve_directory(source: str | Path) -> Path:
    """A local checkpoint directory for `source` (downloading a hub id when there is network)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise CheckpointError(f"{source}: no such checkpoint directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # network, auth, missing repo: one line whatever the cause
        raise CheckpointError(
            f"{source}: not a local directory and not downloadable ({type(err).__name__})"
        ) from None


def load(source: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a fovea or transformers-LlavaNext checkpoint; returns the model in eval mode."""
    from ..model.vlm import VisionLanguageModel

    directory = resolve_directory(source)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{directory}: no config.json, not a model checkpoint")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_file}: not valid JSON ({err})") from None
    if fovea_format.is_fovea_checkpoint(raw):
        config, mapper = fovea_format.read_config(directory, raw), None
    elif raw.get("model_type") == hf_llava_next.MODEL_TYPE:
        config, mapper = hf_llava_next.read_config(directory, raw), "hf"
    else:
        kind = raw.get("model_type") or raw.get("format") or "unknown"
        raise CheckpointError(f"{config_file}: unsupported checkpoint layout {kind!r} (fovea, llava_next)")
    tokenizer = _tokenizer(directory)
    with init_empty_weights():
        model = VisionLanguageModel(config, tokenizer)
    key_map = (lambda k: k) if mapper is None else hf_llava_next.key_map(set(model.state_dict()))
    plans = plan_load(model, weight_files(directory), key_map)
    fill(model, plans, dtype, device)
    if model.lm.config.tie_word_embeddings:
        model.lm.tie_weights()
    _check_filled(model, directory)
    model.to(device)
    return model.eval()


def _tokenizer(directory: Path):
    has_tokenizer = any(
        (directory / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
    )
    if not has_tokenizer:
        logger.warning("%s has no tokenizer files; prepare/generate will need one", directory)
        return None
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{directory}: tokenizer files cannot be loaded ({str(err).splitlines()[0]})"
        ) from None


def _check_filled(model, directory: Path) -> None:
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_meta:
            raise CheckpointError(f"{directory}: no weights for {name!r}")
