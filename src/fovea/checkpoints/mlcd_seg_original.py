"""MLCD-Seg's original layout: an original LLaVA-NeXT checkpoint that also holds SAM and ``[SEG]``'s
projection (``deepglint/unicom`` ``mlcd_vl/downstream``; ``DeepGlint-AI/MLCD-Seg``).

The downstream model adds two modules to ``LlavaQwenModel`` (``llava_arch.py``), so their weights
sit beside the LM's under ``model.``:

* ``model.sam.*``: segment_anything's ``Sam`` (``image_encoder``, ``prompt_encoder``,
  ``mask_decoder``; its pixel mean and std are unsaved buffers), built by ``build_sam_vit_h``;
* ``model.text2sam_projection.{0,2}.*``: Linear(LM width -> 256), GELU, Linear(256 -> 256).

Such a checkpoint is recognised by its weights (``model.sam.mask_decoder.*``), never by its name.
SAM's sizes are read from the weights' shapes (widths, depths, window size, global-attention
blocks, the image encoder's heads from its relative-position tables); what no shape tells is
``build_sam``'s constant: 8 mask-decoder heads, GELU in the image encoder, ReLU in the decoder.
The original's two-way transformer normalises with torch's default LayerNorm eps (1e-5), where
transformers' ``SamConfig`` defaults to 1e-6: set here to the original's. The ``[SEG]`` token is
the one the checkpoint's tokenizer holds (added as a special token, embeddings resized).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import CheckpointError

SAM = "model.sam."
PROJECTION = "model.text2sam_projection."
_MARKER = SAM + "mask_decoder.iou_token.weight"
DECODER_HEADS = 8  # TwoWayTransformer(num_heads=8) in build_sam: not in any shape
_DECODER_EPS = 1e-5  # nn.LayerNorm's default, which the original's two-way transformer keeps


def detect(keys) -> bool:
    """Whether a checkpoint's keys (or shapes) hold MLCD-Seg's SAM."""
    return _MARKER in keys


def _count(shapes: dict, pattern: str) -> int:
    found = {m[1] for key in shapes if (m := re.match(pattern, key))}
    return len(found)


def sam_fields(shapes: dict[str, tuple[int, ...]], where: Path) -> dict:
    """transformers' SamConfig fields for the SAM whose original-layout `shapes` (``model.sam.*``) are given."""
    try:
        return {
            "vision_config": _vision(shapes),
            "prompt_encoder_config": _prompt(shapes),
            "mask_decoder_config": _decoder(shapes),
        }
    except (KeyError, ValueError, ZeroDivisionError) as err:
        raise CheckpointError(
            f"{where}: MLCD-Seg's SAM weights are incomplete or inconsistent ({err})"
        ) from None


def _vision(shapes: dict) -> dict:
    enc = SAM + "image_encoder."
    width, _, patch, _ = shapes[enc + "patch_embed.proj.weight"]
    grid = shapes[enc + "pos_embed"][1]
    depth = _count(shapes, re.escape(enc) + r"blocks\.(\d+)\.")
    rows = [shapes[f"{enc}blocks.{i}.attn.rel_pos_h"][0] for i in range(depth)]
    head_dim = shapes[enc + "blocks.0.attn.rel_pos_h"][1]
    global_blocks = [i for i, r in enumerate(rows) if r == 2 * grid - 1]
    windows = {(r + 1) // 2 for r in rows if r != 2 * grid - 1}
    if len(windows) > 1:
        raise ValueError(f"windowed blocks disagree on the window size: {sorted(windows)}")
    return {
        "hidden_size": width,
        "output_channels": shapes[enc + "neck.0.weight"][0],
        "num_hidden_layers": depth,
        "num_attention_heads": width // head_dim,
        "image_size": grid * patch,
        "patch_size": patch,
        "mlp_dim": shapes[enc + "blocks.0.mlp.lin1.weight"][0],
        "window_size": windows.pop() if windows else 0,
        "global_attn_indexes": global_blocks,
        "qkv_bias": enc + "blocks.0.attn.qkv.bias" in shapes,
        "num_pos_feats": shapes[SAM + "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"][1],
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
    }


def _prompt(shapes: dict) -> dict:
    enc = SAM + "prompt_encoder."
    grid, (_, _, patch, _) = (
        shapes[SAM + "image_encoder.pos_embed"][1],
        shapes[SAM + "image_encoder.patch_embed.proj.weight"],
    )
    return {
        "hidden_size": shapes[enc + "no_mask_embed.weight"][1],
        "image_size": grid * patch,
        "patch_size": patch,
        "mask_input_channels": shapes[enc + "mask_downscaling.3.weight"][0],
        "num_point_embeddings": _count(shapes, re.escape(enc) + r"point_embeddings\.(\d+)\."),
        "layer_norm_eps": 1e-6,
    }


def _decoder(shapes: dict) -> dict:
    dec = SAM + "mask_decoder."
    width = shapes[dec + "iou_token.weight"][1]
    return {
        "hidden_size": width,
        "num_hidden_layers": _count(shapes, re.escape(dec) + r"transformer\.layers\.(\d+)\."),
        "mlp_dim": shapes[dec + "transformer.layers.0.mlp.lin1.weight"][0],
        "num_attention_heads": DECODER_HEADS,
        "attention_downsample_rate": width
        // shapes[dec + "transformer.final_attn_token_to_image.q_proj.weight"][0],
        "num_multimask_outputs": shapes[dec + "mask_tokens.weight"][0] - 1,
        "iou_head_depth": _count(shapes, re.escape(dec) + r"iou_prediction_head\.layers\.(\d+)\."),
        "iou_head_hidden_dim": shapes[dec + "iou_prediction_head.layers.0.weight"][0],
        "layer_norm_eps": _DECODER_EPS,
        "hidden_act": "relu",
    }


# segment_anything's module names -> transformers' SamModel names, applied in order
_RENAMES = (
    (r"^image_encoder\.", "vision_encoder."),
    (r"^vision_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^vision_encoder\.blocks\.", "vision_encoder.layers."),
    (r"\.norm([12])\.", r".layer_norm\1."),
    (r"^vision_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^vision_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^vision_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^vision_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (
        r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
        "shared_image_embedding.positional_embedding",
    ),
    (r"^prompt_encoder\.point_embeddings\.", "prompt_encoder.point_embed."),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"\.transformer\.layers\.(\d+)\.norm([1-4])\.", r".transformer.layers.\1.layer_norm\2."),
    (r"\.transformer\.norm_final_attn\.", ".transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
)
_MLP = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(.*)$"
)


def key_map(iou_head_depth: int):
    """An original checkpoint key -> fovea's key for MLCD-Seg's parts (None: not one of them).
    `iou_head_depth`: the IoU head's layer count (its last layer is transformers' ``proj_out``)."""

    def mapped(key: str) -> str | None:
        if key.startswith(PROJECTION):
            return "seg.text2sam." + key.removeprefix(PROJECTION)
        if not key.startswith(SAM):
            return None
        rest = key.removeprefix(SAM)
        if rest in ("pixel_mean", "pixel_std"):
            return None  # SAM's processor holds the same normalisation
        for pattern, replacement in _RENAMES:
            rest = re.sub(pattern, replacement, rest)
        if found := _MLP.match(rest):
            depth = 3 if "hypernetworks" in found[1] else iou_head_depth
            index = int(found[2])
            layer = "proj_in" if index == 0 else "proj_out" if index == depth - 1 else f"layers.{index - 1}"
            rest = f"{found[1]}.{layer}.{found[3]}"
        return "seg.sam." + rest

    return mapped


def seg_config(shapes: dict, tokenizer, where: Path):
    """fovea's SegConfig for an original MLCD-Seg checkpoint (its ``model.sam.*`` `shapes`)."""
    from ..seg.config import SegConfig
    from ..seg.head import SEG_TOKEN

    if tokenizer is None or SEG_TOKEN not in tokenizer.get_vocab():
        raise CheckpointError(
            f"{where}: holds MLCD-Seg's SAM weights, but its tokenizer has no {SEG_TOKEN} token"
        )
    return SegConfig(sam=sam_fields(shapes, where), token_id=tokenizer.convert_tokens_to_ids(SEG_TOKEN))
