"""Variable-length attention over packed rows with torch's SDPA: each packed sample attends to itself
alone, and nothing is computed between samples.

transformers keeps packed samples apart with a block-diagonal mask for sdpa (the whole row's
attention computed, most of it masked away) or with flash-attention's varlen kernel where it is
installed (CUDA). `VARLEN` is the same for any device: registered in transformers'
``AttentionInterface`` (and, with no mask to build, in ``AttentionMaskInterface``), it cuts each row
at the restarts of its ``position_ids`` and runs causal SDPA on each sample (torch's fused causal
kernels, no mask). Padded rows (an attention mask) run as transformers' sdpa runs them, so a stage
may mix packed and unpacked batches. `varlen` switches an LM to it for a block of code (a training
stage: gradient checkpointing recomputes the forward during the backward).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

VARLEN = "fovea_varlen"


def varlen_attention(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, position_ids=None, **kwargs
):
    """(B, H, T, d) queries, (B, H_kv, T, d) keys and values -> (B, T, H, d), causal within each run
    of `position_ids` that starts at 0; rows with a mask (padding) are transformers' sdpa."""
    if attention_mask is not None or position_ids is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    position_ids = position_ids.expand(query.shape[0], -1)  # (1, T) when the model made them
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    rows = []
    for b in range(query.shape[0]):
        starts = (position_ids[b] == 0).nonzero().flatten().tolist()
        bounds = list(zip(starts, starts[1:] + [query.shape[2]]))
        pieces = [
            F.scaled_dot_product_attention(
                query[b : b + 1, :, s:e], key[b : b + 1, :, s:e], value[b : b + 1, :, s:e],
                is_causal=True, scale=scaling, dropout_p=dropout if module.training else 0.0,
            )
            for s, e in bounds
        ]  # fmt: skip
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def _mask(*args, attention_mask=None, **kwargs):
    """No mask for rows without padding (samples are cut by position ids); sdpa's for padded rows."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, _mask)


@contextmanager
def varlen(lm):
    """Run `lm`'s forward passes in this block with `VARLEN` attention (packed rows only)."""
    _register()
    config = lm.config
    before = config._attn_implementation
    config._attn_implementation = VARLEN
    try:
        yield
    finally:
        config._attn_implementation = before
