"""The whole-model config: tower + connector + language model + image handling + tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PretrainedConfig

from ..connectors.connector import ConnectorConfig
from ..imaging.processor import ImageConfig
from ..imaging.video import VideoSampling
from ..seg.config import SegConfig
from ..towers.base import TowerConfig
from .lm_config import build_lm_config
from .packing import FramesConfig, MergeKind
from .templates import TEMPLATES


@dataclass(kw_only=True)
class VLMConfig:
    """Everything needed to rebuild a model (weights aside); saved as a checkpoint's config.json."""

    tower: TowerConfig
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    lm: dict
    """transformers config of the causal LM (``model_type``: qwen2, llama, mistral, ...)."""
    image: ImageConfig = field(default_factory=ImageConfig)
    image_token: str = "<image>"
    image_token_id: int
    """Vocabulary id of `image_token`; each image's placeholder is repeated once per visual token."""
    merge: MergeKind = "spatial_unpad"
    newline: bool = True
    """Learned ``image_newline`` vector after every feature row (LLaVA-NeXT ``spatial_unpad``)."""
    frames: FramesConfig = field(default_factory=FramesConfig)
    """How the frames of a video (or of a sample with many images) are pooled and separated."""
    video: VideoSampling = field(default_factory=VideoSampling)
    """Which frames of a video file the model sees (LLaVA-NeXT's sampling rule)."""
    template: str | None = None
    """Default chat template for ``generate``/``chat`` (None: the checkpoint's own `chat_template`
    if it has one, else text is used as given)."""
    template_origin: str | None = None
    """Why `template` is what it is when the checkpoint did not name it (an original LLaVA layout's
    is inferred from its layout and LM); None when the checkpoint or the recipe named it."""
    chat_template: str | None = None
    """The checkpoint's own Jinja chat template (transformers checkpoints ship one), used when no
    fovea `template` is set; kept so conversions and exports carry it on."""
    attn_implementation: str = "sdpa"
    max_length: int | None = None
    """Longest prompt in tokens, visual tokens included (None: the LM's own limit only)."""
    seg: SegConfig | None = None
    """Referring segmentation (MLCD-Seg): SAM and the [SEG] token (None: text only)."""

    def __post_init__(self) -> None:
        if "model_type" not in self.lm:
            raise ValueError("lm needs a 'model_type' (e.g. qwen2)")
        if self.template is not None:
            TEMPLATES.get(self.template)
        if self.merge != "flat" and self.connector.keep_cls and self.image.uses_anyres:
            raise ValueError("AnyRes spatial merging needs patch tokens only; set connector.keep_cls: false")

    def lm_config(self) -> PretrainedConfig:
        """The LM's transformers config, every field of `lm` given to its class (model/lm_config.py)."""
        return build_lm_config(self.lm)
