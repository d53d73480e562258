"""An independent forward of the original MMFuser block (yuecao0119/MMFuser ``MSCrossAttnBlock``),
plain torch written from its code, nothing from fovea or transformers: the reference the MMFuser
tests (the module alone, and whole original checkpoints) compare fovea with."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ref_points(rows: int, cols: int) -> torch.Tensor:
    """(N, 2) cell centres as (x, y) = ((j + 0.5) / cols, (i + 0.5) / rows), row-major."""
    i, j = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([(j.flatten() + 0.5) / cols, (i.flatten() + 0.5) / rows], -1).float()


def deformable(w: dict, query, value, ref, grids, heads, points):
    """MSDeformAttn: query (B, N, D) samples `value` (B, sum h*w, D) around `ref` (N, 2)."""
    B, N, D = query.shape
    L, d = len(grids), D // heads
    v = F.linear(value, w["value_proj.weight"], w["value_proj.bias"]).view(B, -1, heads, d)
    off = F.linear(query, w["sampling_offsets.weight"], w["sampling_offsets.bias"])
    off = off.view(B, N, heads, L, points, 2)
    logits = F.linear(query, w["attention_weights.weight"], w["attention_weights.bias"])
    a = logits.view(B, N, heads, L * points).softmax(-1).view(B, N, heads, L, points)
    out = query.new_zeros(B, N, heads, d)
    start = 0
    for level, (h, wd) in enumerate(grids):
        # (B, h*w, heads, d) -> (B*heads, d, h, w)
        v_l = v[:, start : start + h * wd].reshape(B, h, wd, heads, d).permute(0, 3, 4, 1, 2)
        v_l = v_l.reshape(B * heads, d, h, wd)
        start += h * wd
        loc = ref[None, :, None, None, :] + off[:, :, :, level] / torch.tensor([wd, h])  # (B, N, heads, P, 2)
        grid = (2 * loc - 1).permute(0, 2, 1, 3, 4).reshape(B * heads, N, points, 2)
        s = F.grid_sample(v_l, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        s = s.view(B, heads, d, N, points).permute(0, 3, 1, 4, 2)  # (B, N, heads, P, d)
        out = out + (s * a[:, :, :, level, :, None]).sum(3)
    return F.linear(out.reshape(B, N, D), w["output_proj.weight"], w["output_proj.bias"])


def reference(state: dict, layers, grids, heads, points, eps):
    """q + gamma1 * (ca + gamma2 * sa), ca = cross(LN_q(q), LN_f(cat(levels))), sa = self(LN_1(ca))."""
    *levels, q = layers
    D = q.shape[-1]

    def norm(name, t):
        return F.layer_norm(t, (D,), state[f"{name}.weight"], state[f"{name}.bias"], eps)

    def part(prefix):
        return {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}

    ref = ref_points(*grids[-1])
    features = norm("feat_norm", torch.cat(levels, 1))
    ca = deformable(part("cross_attn"), norm("query_norm", q), features, ref, grids[:-1], heads, points)
    n = norm("norm1", ca)
    sa = deformable(part("self_attn"), n, n, ref, [grids[-1]], heads, points)
    return q + state["gamma1"] * (ca + state["gamma2"] * sa)
