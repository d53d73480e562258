"""fovea: multimodal LLMs whose strength is their vision.

import fovea
model = fovea.load("path/or/hub-id")                       # fovea or transformers LlavaNext
inputs = model.prepare("<image>\\nWhat is this?", images=["cat.png"], template="qwen_1_5")
logits = model(**inputs).logits
text = model.generate("What is this?", images=["cat.png"], max_new_tokens=32)
"""

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, FoveaError, ImageError  # noqa: E402

_LAZY = {
    "load": ("checkpoints", "load"),
    "extract_features": ("extract", "extract_features"),
    "VLMConfig": ("model.config", "VLMConfig"),
    "VisionLanguageModel": ("model.vlm", "VisionLanguageModel"),
}
"""Imported on first use, so `import fovea` (and `fovea --help`) does not pay for torch and
transformers until something needs them."""


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fovea' has no attribute {name!r}")
    from importlib import import_module

    module, attr = _LAZY[name]
    value = getattr(import_module(f".{module}", __name__), attr)
    globals()[name] = value
    return value


__all__ = [
    "CheckpointError",
    "ConfigError",
    "FoveaError",
    "ImageError",
    "VLMConfig",
    "VisionLanguageModel",
    "__version__",
    "extract_features",
    "load",
]
