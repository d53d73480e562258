"""fovea's own checkpoint format: one directory.

    config.json        {"format": "fovea", "fovea_version": ..., "model": <VLMConfig as a dict>}
    model.safetensors  (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
    tokenizer files    (whatever the tokenizer's save_pretrained writes)
    text_tokenizer/    a fuser's own files, if it has any (vMLLM's text tower tokenizer)

Weights keep the module names of ``VisionLanguageModel`` (``tower.model.*``, ``connector.*``,
``lm.*``, ``image_newline``), so the tower and LM parts are transformers' own key names under a
prefix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..atomic import write_text_atomic
from ..config import from_dict, to_dict
from ..errors import CheckpointError, ConfigError
from .weights import save_state

if TYPE_CHECKING:
    from ..model.config import VLMConfig
    from ..model.vlm import VisionLanguageModel

FORMAT = "fovea"


def save_model(model: VisionLanguageModel, directory: Path, max_shard_size: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_state(model.state_dict(), directory, max_shard_size)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(directory))
    model.connector.fuser.save_files(directory)
    payload = {"format": FORMAT, "fovea_version": __version__, "model": to_dict(model.config)}
    # written last: a directory with config.json is complete
    write_text_atomic(directory / "config.json", json.dumps(payload, indent=2))
    return directory


def is_fovea_checkpoint(raw: dict) -> bool:
    return raw.get("format") == FORMAT


def read_config(directory: Path, raw: dict) -> VLMConfig:
    from ..model.config import VLMConfig

    try:
        return from_dict(VLMConfig, raw.get("model"), "model")
    except ConfigError as err:
        raise CheckpointError(f"{directory / 'config.json'}: {err}") from None
