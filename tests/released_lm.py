"""Language-model fields as released checkpoints write them, none of them at its default.

MLCD-LLaVA-NeXT and MLCD-Embodied (Qwen2.5: ``rope_theta`` 1e6), vMLLM's and LLaVA-NeXT's Llama-3
(5e5 and ``rope_scaling`` llama3) and the Mistral LLaVAs save these fields in the spelling of the
transformers they were trained with: ``rope_theta`` and ``rope_scaling`` at the top level, not the
``rope_parameters`` that transformers 5 writes. A reader that drops or defaults any of them gives
other logits, so every test reference is built from these dicts by transformers' own config class,
and `assert_fields_reach` checks each one by name on the model fovea loaded.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

WIDTH, HEADS, KV_HEADS, HEAD_DIM = 64, 4, 2, 24  # head_dim is not width / heads (16): it must be read

_COMMON = {
    "hidden_size": WIDTH,
    "intermediate_size": 2 * WIDTH,
    "num_hidden_layers": 2,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 3e-5,
    "tie_word_embeddings": False,
}
RELEASED = {
    # LLaVA-NeXT/vMLLM Llama-3: a large base with llama3 frequency scaling, biased attention
    "llama": {
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        },
        "head_dim": HEAD_DIM,
        "attention_bias": True,
        "mlp_bias": True,
    },
    # Qwen2.5 (MLCD-LLaVA-NeXT, MLCD-Embodied): base 1e6; yarn and a sliding window on the last layer
    # so that a reader dropping either is seen; tied embeddings as the small Qwen2.5 models ship
    "qwen2": {
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 2048},
        "head_dim": HEAD_DIM,
        "use_sliding_window": True,
        "sliding_window": 16,
        "max_window_layers": 1,
        "tie_word_embeddings": True,
    },
    # Mistral: its own base, linear scaling, a sliding window shorter than the prompts
    "mistral": {
        "rope_theta": 250000.0,
        "rope_scaling": {"type": "linear", "factor": 3.0},
        "head_dim": HEAD_DIM,
        "sliding_window": 16,
    },
}


def released_lm_fields(vocab_size: int, kind: str = "qwen2") -> dict:
    """An LM's config.json fields as a released LLaVA checkpoint stores them (legacy spelling)."""
    return {"model_type": kind, "vocab_size": vocab_size, **_COMMON, **RELEASED[kind]}


def reference_config(fields: dict):
    """transformers' own reading of `fields` (what ``from_pretrained`` makes of that config.json)."""
    kwargs = {k: v for k, v in fields.items() if k != "model_type"}
    return AutoConfig.for_model(fields["model_type"], **kwargs)


def reference_lm(fields: dict, seed: int = 0):
    """transformers' causal LM for `fields`, with random weights of a visible scale."""
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_config(reference_config(fields)).eval()
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0, 0.2)
    return lm


def assert_fields_reach(lm_config, fields: dict) -> None:
    """Every forward-relevant field of `fields` on fovea's LM config, by name (a release that
    renames or drops one fails here, not as a small logit difference)."""
    rope = lm_config.rope_parameters
    assert rope["rope_theta"] == fields["rope_theta"], ("rope_theta", rope)
    scaling = fields.get("rope_scaling") or {}
    assert rope.get("rope_type", "default") == scaling.get("rope_type", scaling.get("type", "default")), rope
    for key, value in scaling.items():
        if key not in ("type", "rope_type"):
            assert rope.get(key) == value, (key, rope)
    for key in ("rms_norm_eps", "head_dim", "tie_word_embeddings", "attention_bias", "mlp_bias"):
        if key in fields:
            assert getattr(lm_config, key) == fields[key], (key, getattr(lm_config, key, None))
    if fields.get("sliding_window") is not None:
        assert lm_config.sliding_window == fields["sliding_window"], lm_config.sliding_window
        assert "sliding_attention" in (getattr(lm_config, "layer_types", None) or ["sliding_attention"])


def legacy_form(fields: dict) -> dict:
    """An LM config dict as transformers 4.x wrote it, for writers of released layouts: the base and
    scaling at the top level (``rope_theta``, ``rope_scaling``), no derived ``layer_types``."""
    out = {k: v for k, v in fields.items() if k not in ("rope_parameters", "layer_types")}
    rope = dict(fields.get("rope_parameters") or {})
    out["rope_theta"] = rope.pop("rope_theta", 10000.0)
    kind = rope.pop("rope_type", "default")
    out["rope_scaling"] = None if kind == "default" else {"rope_type": kind, **rope}
    return out


def llava_text(vocab_size: int, kind: str = "qwen2") -> dict:
    """``text_config`` of a transformers Llava/LlavaNext/OneVision reference, with the wrapper's
    ``tie_word_embeddings`` (transformers 5 ties the LM head by the wrapper's field, not
    text_config's; the original LLaVA models tie by the LM's own)."""
    fields = released_lm_fields(vocab_size, kind)
    return {"text_config": fields, "tie_word_embeddings": fields["tie_word_embeddings"]}
