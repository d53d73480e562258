"""fovea: multimodal LLMs whose strength is their vision.

import fovea
model = fovea.load("path/or/hub-id")                       # fovea or transformers LlavaNext
inputs = model.prepare("<image>\\nWhat is this?", images=["cat.png"], template="qwen_1_5")
logits = model(**inputs).logits
text = model.generate("What is this?", images=["cat.png"], max_new_tokens=32)
"""

__version__ = "0.1.0"

from .checkpoints import load  # noqa: E402
from .errors import CheckpointError, ConfigError, FoveaError, ImageError  # noqa: E402
from .extract import extract_features  # noqa: E402
from .model.config import VLMConfig  # noqa: E402
from .model.vlm import VisionLanguageModel  # noqa: E402

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
