"""References for the original-layout tests: a transformers Llava/LlavaNext model, its processor and
a published-style tower directory, and the comparison fovea must pass on the same weights.

Each reference is a tiny transformers model whose LM comes from `released_lm` (every field away from
its default, in the released spelling); tests write its weights in an original layout
(`llava_layouts.write_original`), load them with fovea and `compare` last-position logits (1e-4,
fp32) and greedy text. The pinpoints are asymmetric, so reading the original (width, height) lists
the transformers way would change the grids and fail.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from fovea.tiny import tiny_tokenizer

from hf_reference import llava_next_processor
from released_lm import llava_text

PINPOINTS = [[56, 112], [112, 168], [168, 56], [56, 56]]  # (height, width)


def vision_fields(kind: str, layers: int = 3) -> dict:
    base = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "image_size": 56,
        "patch_size": 14,
    }
    types = {
        "clip": ("clip_vision_model", "quick_gelu"),
        "mlcd": ("mlcd_vision_model", "gelu"),
        "siglip": ("siglip_vision_model", "gelu_pytorch_tanh"),
    }
    model_type, act = types[kind]
    return {**base, "model_type": model_type, "hidden_act": act}


def randomise(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)


def tower_dir(path, kind: str, vision: dict):
    """A published-style tower directory: transformers weights + image processor config."""
    from transformers import AutoConfig

    tower = AutoModel.from_config(AutoConfig.for_model(**vision))
    randomise(tower)
    tower.save_pretrained(path)
    if kind == "siglip":
        SiglipImageProcessorPil(size={"height": 56, "width": 56}).save_pretrained(path)
    else:
        CLIPImageProcessorPil(
            size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
        ).save_pretrained(path)
    return tower


def reference_next(kind: str, tower, layers=-2, pinpoints=PINPOINTS, lm_type="qwen2", tokenizer=None):
    """transformers LlavaNext whose tower is `tower` (SigLIP: run as LLaVA-NeXT does, last block cut);
    `tokenizer`: one holding ``<image>`` (the tiny one by default)."""
    tokenizer = tokenizer or tiny_tokenizer()
    vision = tower.config.to_dict()
    siglip = kind == "siglip"
    if siglip:
        vision["num_hidden_layers"] -= 1
        layers = -1
    config = LlavaNextConfig(
        vision_config=vision,
        **llava_text(len(tokenizer), lm_type),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=layers,
        vision_feature_select_strategy="full" if siglip else "default",
        image_grid_pinpoints=pinpoints,
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    randomise(model)
    own = model.model.vision_tower.state_dict()
    model.model.vision_tower.load_state_dict(
        {k: v for k, v in tower.state_dict().items() if k in own}, strict=False
    )
    return model, llava_next_processor(tokenizer, siglip, pinpoints)


def sample_images():
    rng = np.random.default_rng(5)
    return [Image.fromarray((rng.random(s + (3,)) * 255).astype("uint8")) for s in [(40, 150), (120, 50)]]


def compare(ours, reference, processor, text="<image>\n<image>\nWhat differs?"):
    images = sample_images()
    ref = processor(images=images, text=text, return_tensors="pt")
    inputs = ours.prepare(text, images=images)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    ids = inputs["input_ids"].clone()
    ids[ids == ours.config.image_token_id] = image_id
    assert torch.equal(ids, ref["input_ids"])
    with torch.no_grad():
        expected = reference(**ref).logits[0, -1]
        got = ours(**inputs).logits[0, -1]
    assert (got - expected).abs().max().item() < 1e-4
    eos = processor.tokenizer.eos_token_id
    with torch.no_grad():
        out = reference.generate(
            **ref, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=eos
        )
    text_ref = processor.tokenizer.decode(out[0, ref["input_ids"].shape[1] :], skip_special_tokens=True)
    assert ours.generate(text, images=images, template=None, max_new_tokens=10) == text_ref


def reference_llava(tower, strategy="default"):
    """transformers Llava (LLaVA-1.5 style: square crop, flat tokens, no newline)."""
    tokenizer = tiny_tokenizer()
    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        **llava_text(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
    )
    model = LlavaForConditionalGeneration(config).eval()
    randomise(model)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1,
    )
    return model, processor
