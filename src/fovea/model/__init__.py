"""The vision-language model: config, packing, templates and the module itself."""

from .config import VLMConfig
from .templates import TEMPLATES, Template
from .vlm import VisionLanguageModel

__all__ = ["TEMPLATES", "Template", "VLMConfig", "VisionLanguageModel"]
