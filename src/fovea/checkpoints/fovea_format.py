"""fovea's own checkpoint format, read (model/saving.py writes it and documents the layout)."""

from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..config import from_dict, to_dict
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


class FoveaWriter:
    """``fovea convert --to fovea``: fovea's own names, as they stream past; then config.json (the
    whole resolved config), the tokenizer and the fuser's own files."""

    def __init__(self, opened: Opened):
        self.opened = opened

    def rename(self, key: str) -> str:
        return key

    def adjust(self, name: str, tensor):
        return tensor

    def finish(self, work: Path, model) -> list[str]:
        if self.opened.tokenizer is not None:
            self.opened.tokenizer.save_pretrained(str(work))
        model.connector.fuser.save_files(work)
        payload = {"format": FORMAT, "fovea_version": __version__, "model": to_dict(self.opened.config)}
        (work / "config.json").write_text(json.dumps(payload, indent=2))
        return []


LAYOUT = Layout(is_fovea_checkpoint, _read, _sources, _attach, writer=FoveaWriter, export_as="fovea")
