"""Tiny random transformers LlavaNext checkpoints (the reference side of the parity tests).

Built offline from transformers' own config classes and saved with transformers' own
``save_pretrained``, tokenizer and processor, exactly as a user's checkpoint directory looks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from fovea.imaging.processor import CLIP_MEAN, CLIP_STD
from fovea.tiny import tiny_tokenizer

from released_lm import llava_text

TILE = 56  # 4x4 patches of 14 px per tile: enough for unpadding to remove whole rows
ASYMMETRIC = [[56, 112], [112, 168], [168, 56], [56, 56]]  # (height, width); not closed under swap


def vision_config(kind: str) -> dict:
    base = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2}
    base.update(image_size=TILE, patch_size=14)
    if kind == "clip":
        return {**base, "model_type": "clip_vision_model", "hidden_act": "quick_gelu"}
    if kind == "siglip":
        return {**base, "model_type": "siglip_vision_model", "hidden_act": "gelu_pytorch_tanh"}
    if kind == "mlcd":
        return {**base, "model_type": "mlcd_vision_model", "hidden_act": "gelu"}
    raise ValueError(kind)


def make_hf_llava_next(
    directory: Path,
    kind: str = "clip",
    pinpoints=None,
    layers=-2,
    seed: int = 0,
    chat_template=None,
    lm_type: str = "qwen2",
) -> Path:
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    siglip = kind == "siglip"
    config = LlavaNextConfig(
        vision_config=vision_config(kind),
        **llava_text(len(tokenizer), lm_type),
        image_token_index=image_token_id,
        vision_feature_layer=layers,
        vision_feature_select_strategy="full" if siglip else "default",
        image_grid_pinpoints=pinpoints or ASYMMETRIC,
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():  # random weights with a visible scale so differences would show
        for p in model.parameters():
            p.normal_(0, 0.2)
    processor = llava_next_processor(tokenizer, siglip, config.image_grid_pinpoints, chat_template)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def llava_next_processor(tokenizer, siglip: bool, pinpoints, chat_template=None) -> LlavaNextProcessor:
    """transformers' LlavaNext processor for a tiny model: TILE-px views, CLIP or SigLIP norms (SigLIP:
    no CLS token, a square resize without crop)."""
    image_processor = LlavaNextImageProcessorPil(
        size={"height": TILE, "width": TILE} if siglip else {"shortest_edge": TILE},
        crop_size={"height": TILE, "width": TILE},
        do_center_crop=not siglip,
        image_mean=[0.5] * 3 if siglip else CLIP_MEAN,
        image_std=[0.5] * 3 if siglip else CLIP_STD,
        image_grid_pinpoints=pinpoints,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="full" if siglip else "default",
        num_additional_image_tokens=0 if siglip else 1,
        chat_template=chat_template,
    )


def load_hf(directory: Path):
    """transformers' model and processor for a directory made by `make_hf_llava_next`."""
    model = LlavaNextForConditionalGeneration.from_pretrained(directory).eval()
    processor = LlavaNextProcessor.from_pretrained(directory)
    return model, processor
