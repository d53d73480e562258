"""Tower weights in every published form, as a transformers state dict for the tower module.

* a transformers tower directory (``CLIPVisionModel``, ``MLCDVisionModel``, a two-tower
  ``CLIPModel``/``SiglipModel``, ...), or its state dict in a file — with or without the
  ``vision_model.`` level that transformers 5 removed;
* DeepGlint's original MLCD RoPE2D state dict (``conv1``, ``transformer.resblocks.N.*`` with a
  fused ``attn.in_proj``): the fused projection is split into q/k/v, ``class_pos_emb`` kept, the
  absolute ``positional_embedding`` and the CLIP ``proj`` head dropped (the model uses neither),
  and a ``torch.compile`` ``_orig_mod.`` prefix stripped.

Files are read with safetensors or ``torch.load(weights_only=True, mmap=True)``; splitting the
fused projection makes views, not copies.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import CheckpointError

_TWO_TOWER_EXTRAS = ("text_model.", "text_projection", "visual_projection", "logit_scale", "logit_bias")
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_ORIGINAL_BLOCK = {
    "ln_1.": "layer_norm1.",
    "ln_2.": "layer_norm2.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
    "attn.out_proj.": "self_attn.out_proj.",
}
_ORIGINAL_TOP = {
    "conv1.weight": "embeddings.patch_embedding.weight",
    "class_embedding": "embeddings.class_embedding",
    "class_pos_emb": "class_pos_emb",
    "ln_pre.weight": "pre_layrnorm.weight",
    "ln_pre.bias": "pre_layrnorm.bias",
    "ln_post.weight": "post_layernorm.weight",
    "ln_post.bias": "post_layernorm.bias",
}
_ORIGINAL_DROPPED = ("positional_embedding", "proj", "vision_rotary_embedding.")


def is_original_mlcd(keys) -> bool:
    return any(k.removeprefix("_orig_mod.").startswith("transformer.resblocks.") for k in keys)


def original_mlcd_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DeepGlint's RoPE2D ViT state dict -> transformers ``MLCDVisionModel`` keys."""
    out: dict[str, torch.Tensor] = {}
    for raw_key, tensor in state.items():
        key = raw_key.removeprefix("_orig_mod.")
        if key in _ORIGINAL_TOP:
            out[_ORIGINAL_TOP[key]] = tensor
            continue
        block = _BLOCK.match(key)
        if block is None:
            if key == "proj" or key.startswith(_ORIGINAL_DROPPED):
                continue
            raise CheckpointError(f"original MLCD state dict: unexpected key {raw_key!r}")
        prefix, rest = f"encoder.layers.{block.group(1)}.", block.group(2)
        if rest.startswith("attn.in_proj."):
            kind = rest.removeprefix("attn.in_proj.")  # weight (3D, D) or bias (3D,): rows q, k, v
            for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                out[f"{prefix}self_attn.{name}.{kind}"] = part
            continue
        for old, new in _ORIGINAL_BLOCK.items():
            if rest.startswith(old):
                out[prefix + new + rest[len(old) :]] = tensor
                break
        else:
            raise CheckpointError(f"original MLCD state dict: unexpected key {raw_key!r}")
    return out


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one weights file (safetensors, or a torch state dict read safely)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # unpickling refusals, truncation, wrong format: one line naming the file
        raise CheckpointError(f"{path}: not a readable torch state dict ({type(err).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def tower_state(path: Path, module_keys: set[str]) -> dict[str, torch.Tensor]:
    """A state dict for a tower module with `module_keys`, from a tower file in any known form."""
    state = read_state(path)
    if is_original_mlcd(state):
        state = original_mlcd_to_hf(state)
    out = {}
    for key, tensor in state.items():
        if key.startswith(_TWO_TOWER_EXTRAS):
            continue
        target = key if key in module_keys else key.removeprefix("vision_model.")
        if target.endswith("position_ids") and target not in module_keys:
            continue
        out[target] = tensor
    return out
