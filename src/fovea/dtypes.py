"""The floating-point dtypes fovea accepts by name: one table for the command line, recipes and
feature files. Short names (``bf16``) are what flags take; the long ones (``bfloat16``) are torch's
own and what recipes write. Both name the same three dtypes."""

from __future__ import annotations

import torch

from .errors import ConfigError

DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
SHORT_NAMES = ("fp32", "bf16", "fp16")
"""The names flags offer (`--dtype`)."""


def dtype_from_name(name: str | None) -> torch.dtype | None:
    """``"bf16"`` or ``"bfloat16"`` -> torch.bfloat16; empty or None -> None (keep what there is)."""
    if not name:
        return None
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]
