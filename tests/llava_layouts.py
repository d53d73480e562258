"""Write tiny checkpoints in the original LLaVA-NeXT layout from a transformers model's weights.

The reference model is a transformers ``LlavaNext`` / ``Llava`` model; these writers store the
same weights the way LLaVA-NeXT's own ``save_pretrained`` does (``llava_qwen`` config with
``mm_*`` fields, ``model.*`` LM keys, ``model.mm_projector.0/.2``, ``model.image_newline``,
``model.vision_tower.vision_tower.vision_model.*``, sharded safetensors with an index, a
tokenizer without ``<image>``), so a test can load both and compare.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from fovea.tiny import tiny_tokenizer

from released_lm import legacy_form


def original_key(key: str) -> str | None:
    """transformers (5.x save) key -> original LLaVA-NeXT key."""
    if key.startswith("vision_tower."):
        return "model.vision_tower.vision_tower.vision_model." + key.removeprefix("vision_tower.")
    if key.startswith("multi_modal_projector.linear_1."):
        return "model.mm_projector.0." + key.removeprefix("multi_modal_projector.linear_1.")
    if key.startswith("multi_modal_projector.linear_2."):
        return "model.mm_projector.2." + key.removeprefix("multi_modal_projector.linear_2.")
    if key.startswith("language_model.model."):
        return "model." + key.removeprefix("language_model.model.")
    if key == "language_model.lm_head.weight":
        return "lm_head.weight"
    if key == "image_newline":
        return "model.image_newline"
    raise KeyError(key)


def hf_state(model) -> dict[str, torch.Tensor]:
    """The model's weights under transformers 5.x saved names (what save_pretrained writes)."""
    out = {}
    for key, tensor in model.state_dict().items():
        key = key.replace("model.language_model.", "language_model.model.").replace(
            "lm_head.", "language_model.lm_head."
        )
        key = key.replace("model.vision_tower.", "vision_tower.").replace(
            "model.multi_modal_projector.", "multi_modal_projector."
        )
        out[key.replace("model.image_newline", "image_newline")] = tensor
    return out


def save_sharded(state: dict[str, torch.Tensor], directory: Path, shards: int = 3) -> None:
    keys = list(state)
    size = -(-len(keys) // shards)
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {}
    for i, name in enumerate(names):
        part = {k: state[k].contiguous() for k in keys[i * size : (i + 1) * size]}
        save_file(part, directory / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


def write_original(
    model,
    directory: Path,
    *,
    tower_dir: Path,
    pinpoints_hw: list | str | None,
    aspect: str = "anyres",
    merge: str = "spatial_unpad",
    select_layer: int = -2,
    select_feature: str = "patch",
    model_type: str = "llava_qwen",
    tower_inside: bool = True,
    drop_tower_layers_from: int | None = None,
    extra: dict[str, torch.Tensor] | None = None,
    tokenizer=None,
    fields: dict | None = None,
) -> Path:
    """Save `model` (transformers LlavaNext/Llava) in the original LLaVA-NeXT layout; `extra`: more
    tensors under their original names (MLCD-Seg's ``model.sam.*``), `tokenizer` instead of the tiny
    one without ``<image>``, `fields` more config.json fields."""
    directory.mkdir(parents=True, exist_ok=True)
    text = legacy_form(model.config.text_config.to_dict())  # as released: rope_theta, rope_scaling
    vision = model.config.vision_config
    pinpoints = (
        pinpoints_hw if isinstance(pinpoints_hw, (str, type(None))) else [[w, h] for h, w in pinpoints_hw]
    )
    raw = {
        **{k: v for k, v in text.items() if k not in ("architectures", "model_type", "dtype")},
        "model_type": model_type,
        "architectures": ["LlavaQwenForCausalLM"],
        "mm_vision_tower": str(tower_dir),
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": vision.hidden_size,
        "mm_vision_select_layer": select_layer,
        "mm_vision_select_feature": select_feature,
        "mm_patch_merge_type": merge,
        "image_aspect_ratio": aspect,
        "image_grid_pinpoints": pinpoints,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "tokenizer_padding_side": "right",
        "tokenizer_model_max_length": 8192,
        "use_mm_proj": True,
        **(fields or {}),
    }
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    state = {}
    for key, tensor in hf_state(model).items():
        if key.startswith("vision_tower.") and not tower_inside:
            continue
        if drop_tower_layers_from is not None and f"encoder.layers.{drop_tower_layers_from}." in key:
            continue
        if key == "image_newline" and merge != "spatial_unpad":
            continue
        if key == "language_model.lm_head.weight" and text.get("tie_word_embeddings"):
            continue  # save_pretrained writes a tied head once, as the embeddings
        state[original_key(key)] = tensor
    save_sharded({**state, **(extra or {})}, directory)
    (tokenizer or tiny_tokenizer(image_token=False)).save_pretrained(directory)
    return directory
