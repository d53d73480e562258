"""Build the model a recipe describes: pretrained parts from the hub or disk, or tiny random ones.

The tokenizer gains an ``<image>`` token when it lacks one; its id takes a free embedding row if
the LM's vocabulary has padding (as Qwen2.5's does), else the embeddings grow to the next
multiple of 64. LoRA and QLoRA go through peft on the LM (and optionally the tower).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import replace

import torch

from ..config import to_dict
from ..connectors.connector import ConnectorConfig
from ..connectors.fusers import FUSERS, fuser_config
from ..dtypes import dtype_from_name
from ..errors import ConfigError
from ..hub import resolve_directory
from ..imaging.processor import ImageConfig
from ..model.config import VLMConfig
from ..model.lm_config import build_lm_config, normalised
from ..model.vlm import VisionLanguageModel
from ..towers.convnext import add_stage
from ..towers.presets import build_tower, pretrained_source
from .recipe import LoraSpec, ModelSpec

logger = logging.getLogger(__name__)


def build_model(spec: ModelSpec, lora: LoraSpec | None = None) -> VisionLanguageModel:
    if spec.init is not None:
        from ..checkpoints import load

        model = load(spec.init, dtype=dtype_from_name(spec.dtype)).train()
    else:
        model = _fresh(spec, lora)
    if spec.sam is not None and model.config.seg is None:
        _add_sam(model, spec)
    if spec.gradient_checkpointing:
        checkpoint_activations(model.lm)
        checkpoint_activations(model.tower.model)
    if spec.compile:
        compile_blocks(model)
    if lora is not None:
        apply_lora(model, lora)
    return model.train()


def _add_sam(model: VisionLanguageModel, spec: ModelSpec) -> None:
    """MLCD-Seg's [SEG] path with SAM's published weights (facebook/sam-vit-huge for MLCD-Seg)."""
    from transformers import SamModel

    from ..seg.model import add_segmentation

    try:
        sam = SamModel.from_pretrained(resolve_directory(spec.sam), dtype=dtype_from_name(spec.dtype))
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.sam: {spec.sam} cannot be loaded ({str(err).splitlines()[0]})") from None
    add_segmentation(model, sam)


COMPILE_BACKEND = "inductor"


def compile_blocks(model) -> int:
    """torch.compile, in place, every block of the tower and of the LM: the repeated modules (in a
    ModuleList) whose classes the model names in ``_no_split_modules``. Returns how many
    (state-dict keys do not change)."""
    from torch import nn

    count = 0
    for part in (model.tower.model, model.lm):
        names = set(getattr(part, "_no_split_modules", None) or ())
        for stack in (m for m in part.modules() if isinstance(m, nn.ModuleList)):
            for block in stack:
                if type(block).__name__ in names:
                    block.compile(backend=COMPILE_BACKEND)
                    count += 1
    return count


def checkpoint_activations(module) -> None:
    """Recompute activations in backward (non-reentrant), under the name the installed transformers
    uses: ``activation_checkpointing_enable`` from 5.24, ``gradient_checkpointing_enable`` before."""
    if hasattr(module, "activation_checkpointing_enable"):
        module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(module, "gradient_checkpointing_enable"):
        module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _fresh(spec: ModelSpec, lora: LoraSpec | None) -> VisionLanguageModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype_from_name(spec.dtype)
    if spec.tower_config is not None:  # a whole transformers config: a random tower
        tower, image_defaults = build_tower(spec.tower_config)
    else:
        tower, image_defaults = build_tower(spec.tower, pretrained=spec.tower_pretrained)
    if spec.tower_add_stage is not None:
        add_stage(tower, spec.tower_add_stage.depth, spec.tower_add_stage.width)
    tower.to(dtype)
    source = pretrained_source(spec.tower) if spec.tower is not None and spec.tower_pretrained else None
    connector = _complete_connector(spec.connector, source)
    if spec.lm_config is not None:
        from ..tiny_tokenizers import tiny_tokenizer

        tokenizer = tiny_tokenizer(corpus=spec.tokenizer_corpus)
        config = build_lm_config({"model_type": "qwen2", **spec.lm_config})
        config.vocab_size = max(config.vocab_size, len(tokenizer))
        lm = AutoModelForCausalLM.from_config(config).to(dtype)
    else:
        tokenizer = AutoTokenizer.from_pretrained(spec.lm)
        lm = AutoModelForCausalLM.from_pretrained(spec.lm, dtype=dtype, **_quantization(lora))
    image_id = add_image_token(tokenizer, lm)
    config = VLMConfig(
        tower=tower.config,
        connector=connector,
        lm=normalised(lm.config),
        image=ImageConfig(**{**image_defaults, **spec.image}),
        image_token_id=image_id,
        template=spec.template,
        max_length=spec.max_length,
    )
    model = VisionLanguageModel(config, tokenizer, tower=tower, lm=lm)
    if source is not None:
        model.connector.fuser.load_pretrained(source)  # e.g. vMLLM's text tower, from the same checkpoint
        model.connector.fuser.to(dtype)
    else:
        model.connector.fuser.init_random()
    return model


def _complete_connector(connector: ConnectorConfig, source: str | None) -> ConnectorConfig:
    """The connector with what its fuser reads from the tower's checkpoint filled in."""
    fuser = fuser_config(connector.fuser)
    complete = FUSERS.get(fuser.type).complete_config(fuser, source)
    return replace(connector, fuser=to_dict(complete))


def add_image_token(tokenizer, lm) -> int:
    """Id of ``<image>`` in `tokenizer`, adding it (and an embedding row if none is free)."""
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_tokens(["<image>"], special_tokens=True)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if image_id >= lm.get_input_embeddings().weight.shape[0]:
        lm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    return image_id


def _quantization(lora: LoraSpec | None) -> dict:
    if lora is None or lora.quantize == "none":
        return {}
    if not torch.cuda.is_available():
        raise ConfigError(f"QLoRA ({lora.quantize}) needs a CUDA GPU and bitsandbytes")
    from transformers import BitsAndBytesConfig

    if lora.quantize == "4bit":
        bnb = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    else:
        bnb = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": bnb}


def apply_lora(model: VisionLanguageModel, spec: LoraSpec) -> None:
    """Wrap the LM (and the tower's transformer, if asked) with peft LoRA adapters."""
    from peft import LoraConfig

    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
        bias="none",
    )
    model.lm = _peft_wrap(model.lm, config)
    if spec.tower:
        tower_config = LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        )
        model.tower.model = _peft_wrap(model.tower.model, tower_config)


def _peft_wrap(module, config):
    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft reads transformers' `is_gradient_checkpointing`, deprecated since transformers 5.24:
        # peft's own call, nothing a user can act on.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(module, config)


def merge_lora(model: VisionLanguageModel) -> VisionLanguageModel:
    """Fold LoRA adapters into the weights (peft's merge_and_unload); a no-op without adapters."""
    from peft import PeftModel

    if isinstance(model.lm, PeftModel):
        model.lm = model.lm.merge_and_unload()
    if isinstance(model.tower.model, PeftModel):
        model.tower.model = model.tower.model.merge_and_unload()
    model.config.lm = model.lm.config.to_dict()
    return model
