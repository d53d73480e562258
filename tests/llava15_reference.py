"""The pieces every original LLaVA-1.5-layout model shares (MMFuser, vMLLM, ConvLLaVA), written
from LLaVA's code for the tests' independent references: the checkpoint's config and LM keys,
``expand2square`` padding, and the greedy loop over input embeddings. Nothing from fovea."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image

from released_lm import legacy_form


def config_fields(lm, **fields) -> dict:
    """config.json as LLaVA-1.5's save_pretrained writes it: the LM's fields plus ``mm_*`` ones."""
    own = {
        k: v
        for k, v in legacy_form(lm.config.to_dict()).items()
        if k not in ("architectures", "model_type", "dtype")
    }
    return {
        **own,
        "model_type": "llava_llama",
        "architectures": ["LlavaLlamaForCausalLM"],
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "tokenizer_model_max_length": 2048,
        **fields,
    }


def lm_state(lm) -> dict[str, torch.Tensor]:
    """The LM's weights under LLaVA's names (``model.*``, ``lm_head.weight``)."""
    state = {f"model.{k}": v for k, v in lm.model.state_dict().items()}
    state["lm_head.weight"] = lm.lm_head.weight
    return state


def expand_to_square(image: Image.Image, mean) -> Image.Image:
    """LLaVA's ``expand2square``: the image centred on a square of its longer side, filled with
    int(255 * mean) (truncated, as LLaVA does)."""
    w, h = image.size
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), tuple(int(x * 255) for x in mean))
    canvas.paste(image, ((side - w) // 2, 0) if w < h else (0, (side - h) // 2))
    return canvas


def one_image_embeds(lm, tokenizer, text: str, features: torch.Tensor) -> torch.Tensor:
    """(1, T, D) input embeddings of a prompt with one ``<image>``: the text before and after it
    tokenised apart (LLaVA's tokenizer_image_token), the image's features (N, D) between."""
    embed = lm.get_input_embeddings()
    before, after = (
        embed(torch.tensor(tokenizer(c).input_ids, dtype=torch.long)) for c in text.split("<image>")
    )
    return torch.cat([before, features, after])[None]


def greedy(lm, tokenizer, embeds: torch.Tensor, steps: int) -> tuple[torch.Tensor, str]:
    """(the first step's last-position logits, the greedy text) from input embeddings (1, T, D)."""
    first, new = None, []
    with torch.no_grad():
        for _ in range(steps):
            logits = lm(inputs_embeds=embeds).logits[0, -1]
            first = logits if first is None else first
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            embeds = torch.cat([embeds, lm.get_input_embeddings()(torch.tensor([[token]]))], 1)
    return first, tokenizer.decode(new, skip_special_tokens=True)


def write_checkpoint(directory: Path, raw: dict, state: dict[str, torch.Tensor], tokenizer) -> Path:
    """config.json, sharded safetensors and the tokenizer, as LLaVA-1.5's save_pretrained leaves them."""
    from llava_layouts import save_sharded

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    save_sharded({k: v.detach().clone() for k, v in state.items()}, directory)
    tokenizer.save_pretrained(directory)
    return directory


def pad_pixels(processor, image: Image.Image) -> torch.Tensor:
    """``image_aspect_ratio: pad``: expand2square with int(255 * the processor's mean), then it."""
    return processor(images=[expand_to_square(image, processor.image_mean)], return_tensors="pt")[
        "pixel_values"
    ]
