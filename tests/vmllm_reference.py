"""An independent forward of the original vMLLM visual path (xmu-xiaoma666/vMLLM ``encode_images`` with
its ``ProjectBlock``), plain torch written from the facts of its code plus transformers' own CLIP/SigLIP
towers, nothing from fovea: the reference the vMLLM tests compare fovea with.

``state`` holds the original ProjectBlock keys without the ``model.mm_projector.`` prefix
(``proj.0.weight``, ``img_low_q_proj.bias``, ``txt_k_proj.weight``, ...). Every layer there has a bias.
The text vector has one row per image or a single row shared by all images, as in the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear(state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])


def mam(state: dict, prefix: str, layers: list[torch.Tensor]) -> torch.Tensor:
    """Per-token attention across `layers` (each (B, N, D)) with the `prefix` ('img_low' / 'img_high') weights.

    The query is the mean over layers; the logits are scaled by 1/sqrt(D), have NaN/inf replaced before the
    softmax over the layer axis, and the result is added to the (unprojected) mean. Returns (B, N, D)."""
    z = torch.stack(layers, dim=-2)  # (B, N, L, D)
    zbar = z.mean(dim=-2, keepdim=True)  # (B, N, 1, D)
    q = linear(state, f"{prefix}_q_proj", zbar)
    k = linear(state, f"{prefix}_k_proj", z)
    v = linear(state, f"{prefix}_v_proj", z)
    logits = (q @ k.transpose(-1, -2) / z.shape[-1] ** 0.5).nan_to_num()  # (B, N, 1, L)
    return (zbar + logits.softmax(-1) @ v).squeeze(-2)


def gates(state: dict, x: torch.Tensor, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """IEM on one stream x (B, N, P) with its image vector c (B, 1, P) and the text vector t (B or 1, 1, P).

    Two unscaled sigmoid gates (one per token), averaged with x, then an L2 norm over channels with no eps."""

    def gate(q_name, k_name, v_name, key):
        score = linear(state, q_name, x) @ linear(state, k_name, key).transpose(-1, -2)  # (B, N, 1)
        return torch.sigmoid(score) * linear(state, v_name, x)

    y = (x + gate("txt_q_proj", "txt_k_proj", "txt_v_proj", t) + gate("q_proj", "k_proj", "v_proj", c)) / 3
    return y / y.norm(p=2, dim=-1, keepdim=True)


def mlp(state: dict, v: torch.Tensor) -> torch.Tensor:
    """ProjectBlock.proj: Linear(3P, H) -> exact GELU -> Linear(H, H)."""
    return linear(state, "proj.2", F.gelu(linear(state, "proj.0", v)))


def clip_text_vector(
    text_model, tokenizer, prompts: list[str], text_projection: torch.Tensor
) -> torch.Tensor:
    """(B, 1, P): the CLIP text pooler output (final LN at the EOS token), text_projection applied twice
    (once in the tower's forward_text, once again in encode_images)."""
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=77)
    pooled = text_model(**inputs).pooler_output  # (B, Dt)
    return F.linear(F.linear(pooled, text_projection), text_projection).unsqueeze(1)


def siglip_text_vector(text_model, tokenizer, prompts: list[str]) -> torch.Tensor:
    """(B, 1, Dt): token 0 of the last encoder block's output, before the text model's final LayerNorm."""
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True)
    return text_model(**inputs, output_hidden_states=True).hidden_states[-1][:, :1]


def split_groups(hidden_states) -> tuple[list, list]:
    """hs[:F//2] (low) and hs[F//2:] (high), F = len(hidden_states) including the embedding output."""
    hs = list(hidden_states)
    return hs[: len(hs) // 2], hs[len(hs) // 2 :]


def encode_images_clip(state: dict, hidden_states, visual_projection: torch.Tensor, text_vec) -> torch.Tensor:
    """The CLIP variant. hidden_states: CLIPVisionModel's tuple (index 0 after pre_layrnorm), each
    (B, N+1, D) with CLS first; text_vec (B or 1, 1, P). Returns (B, N, H)."""
    low, high = split_groups(hidden_states)
    streams = [mam(state, "img_low", low), mam(state, "img_high", high), hidden_states[-2]]
    t = text_vec.to(streams[-1].dtype)
    out = []
    for s in streams:
        s = F.linear(s, visual_projection)  # every token, CLS included, no post_layernorm
        out.append(gates(state, s[:, 1:], s[:, :1], t))  # CLS is the image vector, then dropped
    return mlp(state, torch.cat(out, dim=-1))


def encode_images_siglip(state: dict, hidden_states, text_vec) -> torch.Tensor:
    """The SigLIP variant. hidden_states: the tuple of a SiglipVisionModel whose last block was removed
    (index 0 = patch + position embedding), each (B, N, D); text_vec (B or 1, 1, D). Returns (B, N, H)."""
    low, high = split_groups(hidden_states)
    streams = [mam(state, "img_low", low), mam(state, "img_high", high), hidden_states[-1]]
    t = text_vec.to(streams[-1].dtype)
    out = [gates(state, s, s.mean(dim=1, keepdim=True), t) for s in streams]
    return mlp(state, torch.cat(out, dim=-1))
