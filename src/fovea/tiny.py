"""Tiny random-weight models: for tests, demos and benchmarks (tokenizers: `fovea.tiny_tokenizers`).

Nothing here downloads. The tokenizer is a byte-level BPE trained in milliseconds on a few
sentences, with the special tokens the templates use; the models use the ``-tiny`` tower presets
and a 2-layer Qwen2 (or Llama) LM of width 64.
"""

from __future__ import annotations

from pathlib import Path

from .connectors.connector import ConnectorConfig
from .imaging.processor import ImageConfig
from .model.config import VLMConfig
from .model.vlm import VisionLanguageModel
from .tiny_tokenizers import tiny_text_tower, tiny_tokenizer
from .towers.presets import resolve_tower

__all__ = ["tiny_lm_config", "tiny_text_tower", "tiny_tokenizer", "tiny_vlm"]


def tiny_lm_config(vocab_size: int, model_type: str = "qwen2", width: int = 64) -> dict:
    return {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }


def tiny_vlm(
    tower: str = "clip-vit-l14-336-tiny",
    *,
    mode: str = "anyres",
    grid_pinpoints: list | str | None = "(1x1),...,(3x3)",
    template: str | None = "qwen_1_5",
    lm_type: str = "qwen2",
    seed: int = 0,
) -> VisionLanguageModel:
    """A random-weight tiny model with a tiny tokenizer (deterministic for a given seed)."""
    import torch

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    preset = resolve_tower(tower)
    image = ImageConfig(
        **preset.image, mode=mode, grid_pinpoints=grid_pinpoints if mode != "square" else None
    )
    config = VLMConfig(
        tower=preset.tower_config(),
        connector=ConnectorConfig(layers=[-2]),
        lm=tiny_lm_config(len(tokenizer), lm_type),
        image=image,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        template=template,
    )
    return VisionLanguageModel(config, tokenizer).eval()


def tiny_sam(out: str | Path, seed: int = 0, width: int = 32) -> Path:
    """A random SAM (transformers' SamModel) of `width` (32) at 256 px, with its image processor, saved
    to `out`: SAM-H's structure (prompt encoder, two-way mask decoder, 3 multimask outputs), tiny.
    Its image encoder is initialised at std 0.02, not SamVisionConfig's 1e-10 (which suits only
    weights about to be overwritten): a frozen random encoder must still tell pixels apart."""
    import torch
    from transformers import SamConfig, SamImageProcessorPil, SamModel

    heads = max(2, width // 16)
    config = SamConfig(
        vision_config={"hidden_size": width, "output_channels": width, "num_hidden_layers": 2,
                       "num_attention_heads": heads, "image_size": 256, "patch_size": 16, "window_size": 4,
                       "global_attn_indexes": [1], "mlp_dim": 2 * width, "num_pos_feats": width // 2,
                       "initializer_range": 0.02},
        prompt_encoder_config={"hidden_size": width, "image_size": 256, "patch_size": 16, "mask_input_channels": 4},
        mask_decoder_config={"hidden_size": width, "mlp_dim": 2 * width, "num_attention_heads": heads,
                             "iou_head_hidden_dim": width},
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SamModel(config).eval()
    out = Path(out)
    model.save_pretrained(out)
    SamImageProcessorPil(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256},
                         mask_size={"longest_edge": 64}, mask_pad_size={"height": 64, "width": 64}).save_pretrained(out)  # fmt: skip
    return out
