"""What every checkpoint layout shares: the `Layout` contract, the opened checkpoint, the tokenizer.

A layout (checkpoints/layouts.py registers them) says how to recognise its config.json (`detect`),
how to read the model's config and tokenizer from it (`read`), where each weight comes from and
under which fovea name (`sources`), which files a fuser keeps beside its weights (`attach`), and,
for a layout fovea also writes, its `writer`. Loading (loader.py) and conversion (export.py) only
ever call these.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate import init_empty_weights
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoTokenizer

from ..errors import CheckpointError, ConfigError, library_error_line
from ..hub import resolve_directory
from ..model.lm_config import build_lm_config
from ..tensor_files import Source

if TYPE_CHECKING:
    from ..model.config import VLMConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    detect: Callable[[dict], bool]
    """Is this raw config.json one of this layout's?"""
    read: Callable[[Path, dict, str | None, str | None], tuple[VLMConfig, object]]
    """(directory, raw config, base, tower) -> (fovea config, tokenizer or None)."""
    sources: Callable[[Opened, object], list[Source]]
    """(opened checkpoint, model skeleton) -> every weight file with its key map to fovea names."""
    attach: Callable[[Opened, object], None] = lambda opened, model: None
    """Give the model's fuser the files it keeps beside its weights (vMLLM's text tokenizer)."""
    writer: Callable[[Opened], object] | None = None
    """For layouts fovea also writes (``fovea convert --to export_as``): the opened source -> a writer
    with ``rename(key)``, ``adjust(name, tensor)`` and ``finish(directory, model) -> notes``."""
    export_as: str = ""
    """The ``--to`` name of `writer`."""


@dataclass
class Opened:
    """A checkpoint's config and tokenizer, with where each part's weights are (nothing loaded)."""

    directory: Path
    raw: dict
    config: VLMConfig
    tokenizer: object
    layout: Layout
    base: str | None = None
    tower: str | None = None
    """The tower named in place of an original config's ``mm_vision_tower``."""

    def sources(self, model) -> list[Source]:
        return self.layout.sources(self, model)

    def attach(self, model) -> None:
        self.layout.attach(self, model)

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


def lm_config(directory: Path, fields: dict):
    """The LM's transformers config from `fields`, an error naming config.json when refused."""
    try:
        return build_lm_config(fields)
    except ConfigError as err:
        raise CheckpointError(f"{directory / 'config.json'}: {err}") from None


def load_tokenizer(directory: Path, lm, fallback: str | None = None):
    """The checkpoint's tokenizer (else `fallback`'s). `lm` is the LM's config, given so that
    transformers does not read config.json itself (a LLaVA model type it cannot name: a warning)."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    where = directory
    if not any((directory / n).is_file() for n in names) and fallback:
        where = resolve_directory(fallback)
    if not any((where / n).is_file() for n in names):
        logger.warning("%s has no tokenizer files; prepare/generate will need one", directory)
        return None
    try:
        return AutoTokenizer.from_pretrained(str(where), config=lm)
    except StrictDataclassError as err:  # AutoTokenizer reads config.json too and validates it
        raise CheckpointError(f"{where / 'config.json'}: {library_error_line(err)}") from None
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{where}: tokenizer files cannot be loaded ({str(err).splitlines()[0]})"
        ) from None
