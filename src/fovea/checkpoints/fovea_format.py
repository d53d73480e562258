"""fovea's own checkpoint format, read (model/saving.py writes it and documents the layout)."""

from __future__ import annotations

from pathlib import Path

from ..config import from_dict
from ..errors import CheckpointError, ConfigError
from ..model.config import VLMConfig
from ..model.saving import FORMAT
from ..tensor_files import Source, weight_files
from .opened import Layout, Opened, lm_config, load_tokenizer

__all__ = ["FORMAT", "LAYOUT", "is_fovea_checkpoint", "read_config"]


def is_fovea_checkpoint(raw: dict) -> bool:
    return raw.get("format") == FORMAT


def read_config(directory: Path, raw: dict) -> VLMConfig:
    try:
        return from_dict(VLMConfig, raw.get("model"), "model")
    except ConfigError as err:
        raise CheckpointError(f"{directory / 'config.json'}: {err}") from None


def _read(directory: Path, raw: dict, base: str | None, tower: str | None):
    config = read_config(directory, raw)
    return config, load_tokenizer(directory, lm_config(directory, config.lm))


def _sources(opened: Opened, model) -> list[Source]:
    return [Source(weight_files(opened.directory), lambda key: key)]  # fovea's own names


def _attach(opened: Opened, model) -> None:
    model.connector.fuser.load_files(opened.directory)  # written beside the weights (model/saving.py)


LAYOUT = Layout(is_fovea_checkpoint, _read, _sources, _attach)
