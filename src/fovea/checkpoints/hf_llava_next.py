"""Read transformers ``LlavaNextForConditionalGeneration`` checkpoints (both key layouts).

Config: ``vision_config`` -> tower, ``text_config`` -> LM, ``vision_feature_layer`` /
``vision_feature_select_strategy`` -> connector (an ``mlp2x_gelu`` projector, the only kind
transformers has), ``image_grid_pinpoints`` (already (height, width) there) -> AnyRes, and the
image preprocessing from ``preprocessor_config.json``. transformers composites transparency onto
white, so images for these checkpoints are converted that way.

Weights: the layout of transformers >= 4.52 (``model.vision_tower.*``, ``model.language_model.*``,
``lm_head.*``, ``model.image_newline``) and the older one (``vision_tower.*``,
``language_model.model.*``, ``language_model.lm_head.*``, ``image_newline``), with or without the
tower's ``vision_model.`` level that transformers 5 dropped from CLIP-like towers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig

from ..connectors.connector import ConnectorConfig
from ..errors import CheckpointError, library_error_line
from ..imaging.processor import ImageConfig
from ..model.lm_config import lm_fields
from ..tensor_files import KeyMap, Source, weight_files
from ..towers.base import TowerConfig
from ..towers.presets import image_defaults_from_processor, read_processor_settings
from .llava_onevision_writer import hf_writer
from .opened import Layout, Opened, lm_config, load_tokenizer

logger = logging.getLogger(__name__)

MODEL_TYPE = "llava_next"

# (checkpoint prefix, fovea prefix), first match wins; the tower gets its own treatment.
_PREFIXES = [
    ("model.multi_modal_projector.linear_1.", "connector.projector.0."),
    ("model.multi_modal_projector.linear_2.", "connector.projector.2."),
    ("multi_modal_projector.linear_1.", "connector.projector.0."),
    ("multi_modal_projector.linear_2.", "connector.projector.2."),
    ("model.language_model.", "lm.model."),
    ("language_model.model.", "lm.model."),
    ("language_model.lm_head.", "lm.lm_head."),
    ("lm_head.", "lm.lm_head."),
    ("model.image_newline", "image_newline"),
    ("image_newline", "image_newline"),
]
_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")
_DEFAULT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # transformers' default


def read_config(directory: Path, raw: dict, model_type: str = MODEL_TYPE, image_mode: str = "anyres"):
    """VLMConfig for a transformers LlavaNext checkpoint directory (or, with its `model_type` and
    `image_mode`, one of the classes that share its layout: see hf_llava_onevision)."""
    from ..model.config import VLMConfig

    where = directory / "config.json"
    defaults = AutoConfig.for_model(model_type)  # the class's defaults, for fields a config leaves out
    vision = _part(where, raw, "vision_config", "clip_vision_model")
    text = _part(where, raw, "text_config", "llama")
    text = {**lm_fields(text, text["model_type"]), "tie_word_embeddings": _ties_head(where, raw, model_type)}
    tower = TowerConfig(hf_config=vision)
    strategy = raw.get("vision_feature_select_strategy", defaults.vision_feature_select_strategy)
    if strategy == "default" and not tower.cls_token:
        raise CheckpointError(
            f"{where}: vision_feature_select_strategy 'default' drops the first token, but the "
            f"{tower.model_type} tower has no CLS token (transformers would drop a real patch)"
        )
    layers = raw.get("vision_feature_layer", defaults.vision_feature_layer)
    connector = ConnectorConfig(
        layers=[layers] if isinstance(layers, int) else list(layers),
        keep_cls=False,
        projector="mlp2x_gelu",
        projector_bias=raw.get("multimodal_projector_bias", True),
        projector_act=raw.get("projector_hidden_act", "gelu"),
    )
    image_size = int(vision.get("image_size", 336))
    settings = read_processor_settings(directory)
    image = image_defaults_from_processor(settings, image_size)
    if image["size"] != image_size:
        raise CheckpointError(
            f"{directory}: the image processor's crop size {image['size']} differs from the tower's "
            f"image_size {image_size}"
        )
    pinpoints = (
        raw.get("image_grid_pinpoints") or (settings or {}).get("image_grid_pinpoints") or _DEFAULT_PINPOINTS
    )
    try:
        image_cfg = ImageConfig(
            **image, mode=image_mode, grid_pinpoints=[list(p) for p in pinpoints], alpha="white"
        )
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from None
    token_id = raw.get("image_token_index", raw.get("image_token_id", 32000))
    return VLMConfig(tower=tower, connector=connector, lm=text, image=image_cfg, image_token_id=int(token_id))


def _part(where: Path, raw: dict, key: str, default_type: str) -> dict:
    """`raw[key]` with its model_type, checked as transformers will check it (e.g. num_hidden_layers
    against layer_types) when it builds the model, and when AutoTokenizer reads config.json: here
    first, so the error is one line naming the key."""
    fields = raw.get(key)
    if not isinstance(fields, dict):
        raise CheckpointError(f"{where}: LlavaNext config lacks {key!r} (an object)")
    fields = {"model_type": default_type, **fields}
    kwargs = {k: v for k, v in fields.items() if k not in ("model_type", "transformers_version")}
    try:
        AutoConfig.for_model(fields["model_type"], **kwargs)
    except (ValueError, TypeError, StrictDataclassError) as err:
        raise CheckpointError(f"{where}: {key}: {library_error_line(err)}") from None
    return fields


def _ties_head(where: Path, raw: dict, model_type: str = MODEL_TYPE) -> bool:
    """Whether transformers ties this model's LM head to its embeddings: it reads the wrapper's
    ``tie_word_embeddings`` (transformers 5), whatever ``text_config`` says."""
    kwargs = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version")}
    try:
        return bool(AutoConfig.for_model(model_type, **kwargs).tie_word_embeddings)
    except (ValueError, TypeError, StrictDataclassError) as err:
        raise CheckpointError(f"{where}: {library_error_line(err)}") from None


def key_map(tower_keys: set[str]) -> KeyMap:
    """Checkpoint key -> fovea key for a model whose tower has `tower_keys` (``tower.model.*``)."""

    def mapped(key: str) -> str | None:
        if key.endswith(".inv_freq"):  # rotary caches some old checkpoints stored; rebuilt at init
            return None
        for prefix in _TOWER_PREFIXES:
            if key.startswith(prefix):
                return _tower_key(key[len(prefix) :], tower_keys)
        for old, new in _PREFIXES:
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    return mapped


def _tower_key(rest: str, tower_keys: set[str]) -> str:
    candidate = f"tower.model.{rest}"
    if candidate not in tower_keys and rest.startswith("vision_model."):
        return f"tower.model.{rest.removeprefix('vision_model.')}"
    return candidate


def _read(directory: Path, raw: dict, base: str | None, tower: str | None):
    return with_tokenizer(directory, read_config(directory, raw))


def with_tokenizer(directory: Path, config):
    """(config, the checkpoint's tokenizer), its chat template adopted."""
    tokenizer = load_tokenizer(directory, lm_config(directory, config.lm))
    _adopt_chat_template(config, directory, tokenizer)
    return config, tokenizer


def _adopt_chat_template(config, directory: Path, tokenizer) -> None:
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


def sources(opened: Opened, model) -> list[Source]:
    return [Source(weight_files(opened.directory), key_map(set(model.state_dict())))]


LAYOUT = Layout(
    lambda raw: raw.get("model_type") == MODEL_TYPE, _read, sources, writer=hf_writer, export_as="hf"
)
