"""The vision-language model: config, packing, templates and the module itself.

The names are imported on first use, so reading a template (``fovea --help`` lists them) does not
import torch and transformers."""

_LAZY = {
    "TEMPLATES": "templates",
    "Template": "templates",
    "VLMConfig": "config",
    "VisionLanguageModel": "vlm",
}

__all__ = ["TEMPLATES", "Template", "VLMConfig", "VisionLanguageModel"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fovea.model' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
