"""The language model's config, read from whatever dict a checkpoint layout holds.

transformers reads a checkpoint by giving *every* field of its config.json to the LM's config class,
which converts the spellings of older releases itself (``rope_theta`` and ``rope_scaling`` became
``rope_parameters`` in transformers 5). The original LLaVA code does the same: its ``LlavaQwenConfig``
subclasses ``Qwen2Config`` and takes the whole dict. fovea follows both. From a LLaVA-style
config.json it removes only what belongs to LLaVA's own code (the ``mm_*`` fields and the few
image, tokenizer and training fields LLaVA-NeXT, MLCD and the fusers write beside them), never
keeps a list of what the installed config class happens to print: such a list once dropped
``rope_theta`` without a word, and the released Qwen2.5 and Llama-3 models ran at the wrong rotary
base. A field the installed class does not know is kept as transformers keeps it (an attribute).
"""

from __future__ import annotations

from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PretrainedConfig

from ..errors import ConfigError, library_error_line

LLAVA_PREFIXES = ("mm_",)
"""Field prefixes that belong to LLaVA's code, never to a language model."""
LLAVA_FIELDS = frozenset(
    {
        # imaging (LLaVA-1.5/NeXT/OneVision train.py and builder.py)
        "image_aspect_ratio", "image_grid_pinpoints", "image_crop_resolution", "image_split_resolution",
        # the tower and its training switches
        "vision_tower", "vision_tower_pretrained", "unfreeze_mm_vision_tower", "use_mm_proj",
        "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "tune_mm_vision_resampler",
        "freeze_mm_vision_resampler", "s2", "s2_scales",
        # tokenizer settings saved on the model config
        "tokenizer_padding_side", "tokenizer_model_max_length",
        # video (LLaVA-NeXT / OneVision)
        "add_faster_video", "faster_token_stride", "force_sample", "add_time_instruction",
        "use_pos_skipping", "pos_skipping_range",
        # learning rates and switches of MMFuser, ConvLLaVA; MLCD-Seg's SAM path
        "ms_cross_attn_lr", "tune_entire_model", "tune_vision_tower", "vision_tower_lr", "sam_path",
    }
)  # fmt: skip
"""LLaVA fields without the ``mm_`` prefix: every name the training code of LLaVA-1.5, LLaVA-NeXT,
MLCD (``deepglint/unicom`` mlcd_vl), MMFuser, vMLLM and ConvLLaVA writes into config.json besides the
LM's own (``use_cache``, ``torch_dtype``, ``rope_scaling`` and ``pad_token_id`` are the LM's)."""
BOOKKEEPING = frozenset({"model_type", "transformers_version", "architectures", "_name_or_path", "auto_map"})
"""Fields that name the wrapper, not the LM (the LM type is passed apart)."""


def is_llava_field(name: str) -> bool:
    return name.startswith(LLAVA_PREFIXES) or name in LLAVA_FIELDS


def build_lm_config(fields: dict) -> PretrainedConfig:
    """The LM's transformers config from a dict with a ``model_type``, as transformers reads one.

    Raises ConfigError with transformers' own reason in one line."""
    kwargs = {k: v for k, v in fields.items() if k not in BOOKKEEPING}
    try:
        return AutoConfig.for_model(fields["model_type"], **kwargs)
    except (ValueError, TypeError, KeyError, StrictDataclassError) as err:
        raise ConfigError(f"lm config: {library_error_line(err)}") from None


def lm_fields(raw: dict, kind: str) -> dict:
    """The LM's config of a LLaVA-style config.json `raw`, for an LM of type `kind`, in the form the
    installed transformers writes (legacy fields converted by its config class)."""
    fields = {k: v for k, v in raw.items() if not is_llava_field(k) and k not in BOOKKEEPING}
    config = build_lm_config({"model_type": kind, **fields})
    return normalised(config)


def normalised(config: PretrainedConfig) -> dict:
    """``config.to_dict()`` less the version stamp: what fovea stores as a model's ``lm``."""
    out = config.to_dict()
    out.pop("transformers_version", None)
    return out
