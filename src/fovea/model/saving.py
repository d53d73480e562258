"""Writing fovea's own checkpoint format: one directory (reading it is checkpoints/fovea_format.py).

    config.json        {"format": "fovea", "fovea_version": ..., "model": <VLMConfig as a dict>}
    model.safetensors  (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
    tokenizer files    (whatever the tokenizer's save_pretrained writes)
    text_tokenizer/    a fuser's own files, if it has any (vMLLM's text tower tokenizer)

Weights keep the module names of ``VisionLanguageModel`` (``tower.model.*``, ``connector.*``,
``lm.*``, ``image_newline``), so the tower and LM parts are transformers' own key names under a
prefix. config.json is written last and atomically: a directory that has one is complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..atomic import write_text_atomic
from ..config import to_dict
from ..tensor_files import save_state

if TYPE_CHECKING:
    from .vlm import VisionLanguageModel

FORMAT = "fovea"
"""config.json's ``format`` in a fovea checkpoint."""


def save_model(model: VisionLanguageModel, directory: Path, max_shard_size: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_state(model.state_dict(), directory, max_shard_size)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(directory))
    model.connector.fuser.save_files(directory)
    payload = {"format": FORMAT, "fovea_version": __version__, "model": to_dict(model.config)}
    write_text_atomic(directory / "config.json", json.dumps(payload, indent=2))
    return directory
