"""The language model's KV cache, named as the installed transformers names it.

transformers 5.24 renamed the cache argument and output field of every model from
``past_key_values`` to ``cache``; the old name still works there but warns, and goes in 5.40.
Earlier 5.x releases know only ``past_key_values``. fovea passes and reads the cache through
these two helpers, so its calls are the current API on every release of the supported range.
The name is found from transformers' own output class, not from a version number.
"""

from __future__ import annotations

from transformers.modeling_outputs import CausalLMOutputWithPast

CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_kwargs(cache) -> dict:
    """``{"cache": cache}`` (or ``past_key_values``) for an LM call; nothing when there is no cache."""
    return {} if cache is None else {CACHE_NAME: cache}


def output_cache(output):
    """The cache an LM forward returned."""
    return getattr(output, CACHE_NAME)
