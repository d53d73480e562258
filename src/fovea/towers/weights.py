"""Tower weights in every published form, as a transformers state dict for the tower module.

* a transformers tower directory (``CLIPVisionModel``, ``MLCDVisionModel``, a two-tower
  ``CLIPModel``/``SiglipModel``, ...), or its state dict in a file — with or without the
  ``vision_model.`` level that transformers 5 removed;
* DeepGlint's original MLCD RoPE2D state dict (``conv1``, ``transformer.resblocks.N.*`` with a
  fused ``attn.in_proj``): the fused projection is split into q/k/v, ``class_pos_emb`` kept, the
  absolute ``positional_embedding`` and the CLIP ``proj`` head dropped (the model uses neither),
  and a ``torch.compile`` ``_orig_mod.`` prefix stripped;
* UNICOM's released state dicts (``FP16-ViT-B-32.pt`` ..., deepglint/unicom
  ``unicom/vision_transformer.py``: ``patch_embed.proj``, ``pos_embed``, ``blocks.N.*``, ``norm``,
  the ``feature.0-3`` head) renamed for fovea's ``UnicomVisionModel`` (towers/unicom.py), with
  ``torch.compile``/DDP prefixes (``_orig_mod.``, ``module.``) of its fine-tuning scripts stripped.
  The fp16 tensors are cast by ``load_state_dict`` into the tower's dtype.
* a timm ConvNeXt state dict, alone or inside an OpenCLIP checkpoint (``visual.trunk.*``, as LAION's
  CLIP ConvNeXt-L that ConvLLaVA starts from): ``stem.0/1``, ``stages.N.downsample.0/1``,
  ``stages.N.blocks.M.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}`` renamed to transformers'
  ``ConvNextModel`` names; the pooled ``head.norm``, OpenCLIP's projection head and text tower dropped
  (the tower never runs them).

Files are read with safetensors or ``torch.load(weights_only=True, mmap=True)`` (without mmap for
files in torch's legacy format); splitting the fused projection makes views, not copies.
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


_UNICOM_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(\w+)$")
_UNICOM_BLOCK_PARTS = {
    "norm1": "layer_norm1",
    "norm2": "layer_norm2",
    "attn.qkv": "self_attn.qkv",
    "attn.proj": "self_attn.out_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_UNICOM_TOP = {
    "patch_embed.proj": "embeddings.patch_embedding",
    "norm": "post_layernorm",
    "feature.0": "head.fc1",  # Linear(N*D -> D), no bias
    "feature.1": "head.bn1",  # BatchNorm1d(D)
    "feature.2": "head.fc2",  # Linear(D -> E), no bias
    "feature.3": "head.bn2",  # BatchNorm1d(E)
}


def _unwrapped(key: str) -> str:
    while key.startswith(("_orig_mod.", "module.")):
        key = key.removeprefix("_orig_mod.").removeprefix("module.")
    return key


def is_original_unicom(keys) -> bool:
    names = {_unwrapped(k) for k in keys}
    return "pos_embed" in names and "feature.0.weight" in names


def original_unicom_to_fovea(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """UNICOM's ``VisionTransformer`` state dict -> fovea ``UnicomVisionModel`` keys."""
    out: dict[str, torch.Tensor] = {}
    for raw_key, tensor in state.items():
        key = _unwrapped(raw_key)
        block = _UNICOM_BLOCK.match(key)
        stem, _, leaf = key.rpartition(".")
        if key == "pos_embed":
            out["embeddings.position_embedding"] = tensor
        elif block is not None:
            out[f"encoder.layers.{block[1]}.{_UNICOM_BLOCK_PARTS[block[2]]}.{block[3]}"] = tensor
        elif stem in _UNICOM_TOP:
            out[f"{_UNICOM_TOP[stem]}.{leaf}"] = tensor
        else:
            raise CheckpointError(f"original UNICOM state dict: unexpected key {raw_key!r}")
    for norm in ("head.bn1", "head.bn2"):  # absent from old BatchNorm state dicts; torch fills it too
        if f"{norm}.running_mean" in out:
            out.setdefault(f"{norm}.num_batches_tracked", torch.tensor(0))
    return out


_TIMM_CONVNEXT = re.compile(r"^stages\.(\d+)\.(?:downsample\.(\d)\.|blocks\.(\d+)\.)(.+)$")
_TIMM_BLOCK = {"conv_dw.": "dwconv.", "norm.": "layernorm.", "mlp.fc1.": "pwconv1.", "mlp.fc2.": "pwconv2."}


def is_timm_convnext(keys) -> bool:
    return any(k.removeprefix("visual.trunk.").startswith("stem.0.") for k in keys)


def timm_convnext_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's (or OpenCLIP's ``visual.trunk.``) ConvNeXt -> transformers ``ConvNextModel`` keys."""
    out: dict[str, torch.Tensor] = {}
    stem = {"stem.0.": "embeddings.patch_embeddings.", "stem.1.": "embeddings.layernorm."}
    if any(k.startswith("visual.trunk.") for k in state):  # OpenCLIP: keep the image trunk only
        state = {
            k.removeprefix("visual.trunk."): v for k, v in state.items() if k.startswith("visual.trunk.")
        }
    for key, tensor in state.items():
        if key.startswith(("head.", "norm_pre.")):
            continue  # the pooled head: the tower never runs it
        name = next((new + key[len(old) :] for old, new in stem.items() if key.startswith(old)), None)
        match = _TIMM_CONVNEXT.match(key)
        if name is None and match is not None:
            stage, down, block, rest = match.groups()
            if down is not None:
                name = f"encoder.stages.{stage}.downsampling_layer.{down}.{rest}"
            elif rest == "gamma":
                name = f"encoder.stages.{stage}.layers.{block}.layer_scale_parameter"
            else:
                renamed = next(
                    (new + rest[len(old) :] for old, new in _TIMM_BLOCK.items() if rest.startswith(old)), None
                )
                name = renamed and f"encoder.stages.{stage}.layers.{block}.{renamed}"
        if name is None:
            raise CheckpointError(f"timm ConvNeXt state dict: unexpected key {key!r}")
        out[name] = tensor
    return out


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one weights file (safetensors, or a torch state dict read safely)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = _torch_load(path)
    except Exception as err:  # unpickling refusals, truncation, wrong format: one line naming the file
        raise CheckpointError(f"{path}: not a readable torch state dict ({type(err).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:  # torch's legacy (non-zip) format cannot be memory-mapped
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def tower_state(path: Path, module_keys: set[str], unused: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """A state dict for a tower module with `module_keys`, from a tower file in any known form;
    keys of the `unused` top-level modules (`TowerFamily.unused`) are dropped."""
    state = read_state(path)
    try:
        if is_timm_convnext(state):  # first: an OpenCLIP file's text tower looks like MLCD's blocks
            state = timm_convnext_to_hf(state)
        elif is_original_mlcd(state):
            state = original_mlcd_to_hf(state)
        elif is_original_unicom(state):
            state = original_unicom_to_fovea(state)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    out = {}
    for key, tensor in state.items():
        if key.startswith(_TWO_TOWER_EXTRAS) or key.split(".")[0] in unused:
            continue
        target = key if key in module_keys else key.removeprefix("vision_model.")
        if target.endswith("position_ids") and target not in module_keys:
            continue
        out[target] = tensor
    return out
