"""SAM as MLCD-Seg's original runs it, written from its code (segment_anything's modules, copied into
``deepglint/unicom`` ``mlcd_vl/downstream/llava/model/sam``), in plain torch over an original-layout
state dict: the reference the released-layout test compares fovea (transformers' SamModel) with.

Nothing here comes from transformers or fovea: key names, the windowed relative-position attention,
the two-way transformer, the mask decoder's hypernetworks and ``postprocess_masks`` are the
original's, so a renamed key, a dropped eps or a mis-read shape in fovea's reading shows.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def random_sam(width=32, depth=2, heads=2, image=80, patch=16, window=2, global_blocks=(1,), prompt=32,
               decoder_layers=2, decoder_mlp=64, iou_hidden=24, seed=0) -> dict[str, torch.Tensor]:  # fmt: skip
    """A random SAM state dict in the original's names (``image_encoder.*``, ``prompt_encoder.*``,
    ``mask_decoder.*``); mask_in_chans 16, 3 multimask outputs, iou head depth 3, as build_sam."""
    g = torch.Generator().manual_seed(seed)
    grid, head_dim = image // patch, width // heads
    shapes = {"image_encoder.patch_embed.proj.weight": (width, 3, patch, patch),
              "image_encoder.patch_embed.proj.bias": (width,), "image_encoder.pos_embed": (1, grid, grid, width),
              "image_encoder.neck.0.weight": (prompt, width, 1, 1), "image_encoder.neck.1.weight": (prompt,),
              "image_encoder.neck.1.bias": (prompt,), "image_encoder.neck.2.weight": (prompt, prompt, 3, 3),
              "image_encoder.neck.3.weight": (prompt,), "image_encoder.neck.3.bias": (prompt,)}  # fmt: skip
    for i in range(depth):
        rows = 2 * (grid if i in global_blocks else window) - 1
        b = f"image_encoder.blocks.{i}."
        shapes |= {b + "norm1.weight": (width,), b + "norm1.bias": (width,), b + "norm2.weight": (width,),
                   b + "norm2.bias": (width,), b + "attn.qkv.weight": (3 * width, width), b + "attn.qkv.bias": (3 * width,),
                   b + "attn.proj.weight": (width, width), b + "attn.proj.bias": (width,),
                   b + "attn.rel_pos_h": (rows, head_dim), b + "attn.rel_pos_w": (rows, head_dim),
                   b + "mlp.lin1.weight": (4 * width, width), b + "mlp.lin1.bias": (4 * width,),
                   b + "mlp.lin2.weight": (width, 4 * width), b + "mlp.lin2.bias": (width,)}  # fmt: skip
    p = "prompt_encoder."
    shapes |= {p + "pe_layer.positional_encoding_gaussian_matrix": (2, prompt // 2), p + "no_mask_embed.weight": (1, prompt),
               p + "not_a_point_embed.weight": (1, prompt), p + "mask_downscaling.0.weight": (4, 1, 2, 2),
               p + "mask_downscaling.0.bias": (4,), p + "mask_downscaling.1.weight": (4,), p + "mask_downscaling.1.bias": (4,),
               p + "mask_downscaling.3.weight": (16, 4, 2, 2), p + "mask_downscaling.3.bias": (16,),
               p + "mask_downscaling.4.weight": (16,), p + "mask_downscaling.4.bias": (16,),
               p + "mask_downscaling.6.weight": (prompt, 16, 1, 1), p + "mask_downscaling.6.bias": (prompt,)}  # fmt: skip
    shapes |= {f"{p}point_embeddings.{i}.weight": (1, prompt) for i in range(4)}
    shapes |= _decoder_shapes(prompt, decoder_layers, decoder_mlp, iou_hidden)
    return {k: _init(k, s, g) for k, s in shapes.items()}


def _decoder_shapes(c: int, layers: int, mlp: int, iou_hidden: int) -> dict:
    d = "mask_decoder."
    shapes = {d + "iou_token.weight": (1, c), d + "mask_tokens.weight": (4, c)}

    def attention(prefix, internal):
        return {prefix + "q_proj.weight": (internal, c), prefix + "q_proj.bias": (internal,),
                prefix + "k_proj.weight": (internal, c), prefix + "k_proj.bias": (internal,),
                prefix + "v_proj.weight": (internal, c), prefix + "v_proj.bias": (internal,),
                prefix + "out_proj.weight": (c, internal), prefix + "out_proj.bias": (c,)}  # fmt: skip

    for i in range(layers):
        t = f"{d}transformer.layers.{i}."
        shapes |= attention(t + "self_attn.", c) | attention(t + "cross_attn_token_to_image.", c // 2)
        shapes |= attention(t + "cross_attn_image_to_token.", c // 2)
        shapes |= {t + f"norm{n}.{w}": (c,) for n in range(1, 5) for w in ("weight", "bias")}
        shapes |= {t + "mlp.lin1.weight": (mlp, c), t + "mlp.lin1.bias": (mlp,), t + "mlp.lin2.weight": (c, mlp),
                   t + "mlp.lin2.bias": (c,)}  # fmt: skip
    shapes |= attention(d + "transformer.final_attn_token_to_image.", c // 2)
    shapes |= {d + "transformer.norm_final_attn.weight": (c,), d + "transformer.norm_final_attn.bias": (c,),
               d + "output_upscaling.0.weight": (c, c // 4, 2, 2), d + "output_upscaling.0.bias": (c // 4,),
               d + "output_upscaling.1.weight": (c // 4,), d + "output_upscaling.1.bias": (c // 4,),
               d + "output_upscaling.3.weight": (c // 4, c // 8, 2, 2), d + "output_upscaling.3.bias": (c // 8,)}  # fmt: skip
    for name, count, hidden, out in [
        ("output_hypernetworks_mlps", 4, c, c // 8),
        ("iou_prediction_head", 1, iou_hidden, 4),
    ]:
        for m in range(count):
            base = f"{d}{name}.{m}.layers." if name != "iou_prediction_head" else f"{d}{name}.layers."
            dims = [(hidden, c), (hidden, hidden), (out, hidden)]
            shapes |= {f"{base}{j}.weight": dims[j] for j in range(3)} | {
                f"{base}{j}.bias": (dims[j][0],) for j in range(3)
            }
    return shapes


def _init(key: str, shape: tuple, g: torch.Generator) -> torch.Tensor:
    if key.endswith(
        ("norm1.weight", "norm2.weight", "norm3.weight", "norm4.weight", "norm_final_attn.weight")
    ) or (len(shape) == 1 and key.endswith("weight")):
        return 1 + 0.1 * torch.randn(shape, generator=g)  # LayerNorm scales near 1
    if key.endswith("positional_encoding_gaussian_matrix"):
        return torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    return torch.randn(shape, generator=g) / math.sqrt(max(fan_in, 1)) * (0.3 if len(shape) == 1 else 1)


# -- preprocessing: ResizeLongestSide, (x - mean) / std on 0..255, zero padding -------------------


def preprocess(image, side: int) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """(pixels (3, side, side), original (h, w), resized (h, w)) as the original's ``_process_sam_image``."""
    w, h = image.size
    scale = side / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    array = np.asarray(image.convert("RGB").resize((new_w, new_h), resample=2), dtype=np.float32)  # bilinear
    x = (torch.from_numpy(array).permute(2, 0, 1) - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[
        :, None, None
    ]
    return F.pad(x, (0, side - new_w, 0, side - new_h)), (h, w), (new_h, new_w)


# -- image encoder ------------------------------------------------------------------------------


def _layer_norm_2d(x, sd, prefix, eps=1e-6):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + eps)
    return sd[prefix + "weight"][:, None, None] * x + sd[prefix + "bias"][:, None, None]


def _rel_pos(q_size: int, k_size: int, rel: torch.Tensor) -> torch.Tensor:
    assert rel.shape[0] == 2 * max(q_size, k_size) - 1  # the tables fit: no resizing needed here
    q = torch.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    return rel[((q - k) + (k_size - 1) * max(q_size / k_size, 1.0)).long()]


def _attention(x, sd, b, heads):
    batch, h, w, _ = x.shape
    qkv = F.linear(x, sd[b + "qkv.weight"], sd[b + "qkv.bias"]).reshape(batch, h * w, 3, heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, batch * heads, h * w, -1).unbind(0)
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    rq = q.reshape(batch * heads, h, w, -1)
    rel_h = torch.einsum("bhwc,hkc->bhwk", rq, _rel_pos(h, h, sd[b + "rel_pos_h"]))
    rel_w = torch.einsum("bhwc,wkc->bhwk", rq, _rel_pos(w, w, sd[b + "rel_pos_w"]))
    attn = (attn.view(-1, h, w, h, w) + rel_h[..., :, None] + rel_w[..., None, :]).view(-1, h * w, h * w)
    out = (attn.softmax(-1) @ v).view(batch, heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(batch, h, w, -1)
    return F.linear(out, sd[b + "proj.weight"], sd[b + "proj.bias"])


def _windowed(x, size, fn):
    batch, h, w, c = x.shape
    ph, pw = (size - h % size) % size, (size - w % size) % size
    x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = (
        x.view(batch, hp // size, size, wp // size, size, c)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(-1, size, size, c)
    )
    x = fn(x)
    x = (
        x.view(batch, hp // size, wp // size, size, size, -1)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(batch, hp, wp, -1)
    )
    return x[:, :h, :w]


def image_encoder(sd, pixels, *, heads, window, global_blocks):
    e = "image_encoder."
    patch = sd[e + "patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(pixels, sd[e + "patch_embed.proj.weight"], sd[e + "patch_embed.proj.bias"], stride=patch)
    x = x.permute(0, 2, 3, 1) + sd[e + "pos_embed"]
    depth = len({k.split(".")[2] for k in sd if k.startswith(e + "blocks.")})
    for i in range(depth):
        b = f"{e}blocks.{i}."
        normed = F.layer_norm(x, x.shape[-1:], sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-6)
        attend = lambda t, b=b: _attention(t, sd, b + "attn.", heads)  # noqa: E731
        x = x + (attend(normed) if i in global_blocks else _windowed(normed, window, attend))
        normed = F.layer_norm(x, x.shape[-1:], sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-6)
        hidden = F.gelu(F.linear(normed, sd[b + "mlp.lin1.weight"], sd[b + "mlp.lin1.bias"]))
        x = x + F.linear(hidden, sd[b + "mlp.lin2.weight"], sd[b + "mlp.lin2.bias"])
    x = _layer_norm_2d(F.conv2d(x.permute(0, 3, 1, 2), sd[e + "neck.0.weight"]), sd, e + "neck.1.")
    return _layer_norm_2d(F.conv2d(x, sd[e + "neck.2.weight"], padding=1), sd, e + "neck.3.")


# -- prompt encoder and mask decoder --------------------------------------------------------------


def dense_pe(sd, grid: int) -> torch.Tensor:
    ones = torch.ones(grid, grid)
    y, x = (ones.cumsum(0) - 0.5) / grid, (ones.cumsum(1) - 0.5) / grid
    coords = (2 * torch.stack([x, y], -1) - 1) @ sd[
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    ]
    coords = 2 * math.pi * coords
    return torch.cat([coords.sin(), coords.cos()], -1).permute(2, 0, 1)[None]


def _attend(sd, p, q, k, v, heads=8):
    q = F.linear(q, sd[p + "q_proj.weight"], sd[p + "q_proj.bias"])
    k = F.linear(k, sd[p + "k_proj.weight"], sd[p + "k_proj.bias"])
    v = F.linear(v, sd[p + "v_proj.weight"], sd[p + "v_proj.bias"])
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    out = ((q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])).softmax(-1) @ v
    out = out.transpose(1, 2).reshape(out.shape[0], -1, heads * out.shape[-1])
    return F.linear(out, sd[p + "out_proj.weight"], sd[p + "out_proj.bias"])


def _norm(sd, p, x):
    return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"], 1e-5)  # nn.LayerNorm's default


def two_way(sd, image, image_pe, points):
    t = "mask_decoder.transformer."
    keys, key_pe = image.flatten(2).permute(0, 2, 1), image_pe.flatten(2).permute(0, 2, 1)
    queries = points
    layers = len({k.split(".")[3] for k in sd if k.startswith(t + "layers.")})
    for i in range(layers):
        b = f"{t}layers.{i}."
        if i == 0:
            queries = _attend(sd, b + "self_attn.", queries, queries, queries)
        else:
            q = queries + points
            queries = queries + _attend(sd, b + "self_attn.", q, q, queries)
        queries = _norm(sd, b + "norm1.", queries)
        queries = queries + _attend(
            sd, b + "cross_attn_token_to_image.", queries + points, keys + key_pe, keys
        )
        queries = _norm(sd, b + "norm2.", queries)
        hidden = F.relu(F.linear(queries, sd[b + "mlp.lin1.weight"], sd[b + "mlp.lin1.bias"]))
        queries = _norm(
            sd, b + "norm3.", queries + F.linear(hidden, sd[b + "mlp.lin2.weight"], sd[b + "mlp.lin2.bias"])
        )
        keys = keys + _attend(sd, b + "cross_attn_image_to_token.", keys + key_pe, queries + points, queries)
        keys = _norm(sd, b + "norm4.", keys)
    queries = queries + _attend(sd, t + "final_attn_token_to_image.", queries + points, keys + key_pe, keys)
    return _norm(sd, t + "norm_final_attn.", queries), keys


def _mlp(sd, p, x, depth=3):
    for j in range(depth):
        x = F.linear(x, sd[f"{p}{j}.weight"], sd[f"{p}{j}.bias"])
        x = F.relu(x) if j < depth - 1 else x
    return x


def mask_decoder(sd, embeddings, text_embeds):
    """`embeddings` (1, C, g, g) one image's; `text_embeds` (k, C) -> (k, 4g, 4g) low-res logits of the
    first mask (``multimask_output=False``), the prompt encoder given only ``text_embeds``."""
    d, k = "mask_decoder.", text_embeds.shape[0]
    grid = embeddings.shape[-1]
    tokens = torch.cat([sd[d + "iou_token.weight"], sd[d + "mask_tokens.weight"]])
    tokens = torch.cat([tokens[None].expand(k, -1, -1), text_embeds[:, None]], 1)
    dense = sd["prompt_encoder.no_mask_embed.weight"].reshape(1, -1, 1, 1).expand(k, -1, grid, grid)
    src = embeddings.repeat_interleave(k, 0) + dense
    pos = dense_pe(sd, grid).repeat_interleave(k, 0)
    hs, src = two_way(sd, src, pos, tokens)
    c = src.shape[-1]
    src = src.transpose(1, 2).reshape(k, c, grid, grid)
    up = F.conv_transpose2d(
        src, sd[d + "output_upscaling.0.weight"], sd[d + "output_upscaling.0.bias"], stride=2
    )
    up = F.gelu(_layer_norm_2d(up, sd, d + "output_upscaling.1."))
    up = F.gelu(
        F.conv_transpose2d(
            up, sd[d + "output_upscaling.3.weight"], sd[d + "output_upscaling.3.bias"], stride=2
        )
    )
    count = sd[d + "mask_tokens.weight"].shape[0]
    hyper = torch.stack(
        [_mlp(sd, f"{d}output_hypernetworks_mlps.{i}.layers.", hs[:, 1 + i]) for i in range(count)], 1
    )
    masks = (hyper @ up.flatten(2)).view(k, count, *up.shape[-2:])
    return masks[:, 0]


def postprocess(low, side, resized, original):
    masks = F.interpolate(low[:, None], (side, side), mode="bilinear", align_corners=False)
    masks = masks[..., : resized[0], : resized[1]]
    return F.interpolate(masks, original, mode="bilinear", align_corners=False)[:, 0]
