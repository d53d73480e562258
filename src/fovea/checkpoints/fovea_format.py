"""fovea's own checkpoint format, read (model/saving.py writes it and documents the layout)."""

from __future__ import annotations

from pathlib import Path

from ..config import from_dict
from ..errors import CheckpointError, ConfigError
from ..model.config import VLMConfig
from ..model.saving import FORMAT

__all__ = ["FORMAT", "is_fovea_checkpoint", "read_config"]


def is_fovea_checkpoint(raw: dict) -> bool:
    return raw.get("format") == FORMAT


def read_config(directory: Path, raw: dict) -> VLMConfig:
    try:
        return from_dict(VLMConfig, raw.get("model"), "model")
    except ConfigError as err:
        raise CheckpointError(f"{directory / 'config.json'}: {err}") from None
