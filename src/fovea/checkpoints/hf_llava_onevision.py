"""Read transformers ``LlavaOnevisionForConditionalGeneration`` checkpoints.

The weights have LlavaNext's layout (``model.vision_tower``, ``model.multi_modal_projector``,
``model.image_newline``, ``model.language_model``, ``lm_head``), so the key map and most of the
config are hf_llava_next's. What OneVision does differently, and how fovea runs it:

* defaults: ``vision_feature_select_strategy`` "full", ``vision_feature_layer`` -1 (LlavaNext: "default", -2);
* one image: AnyRes with the ``anyres_max_N`` shrink of ``vision_aspect_ratio`` (default
  anyres_max_9): fovea's image mode ``anyres_max_N``;
* several images: each only its base view (the whole image resized to a square) and one newline:
  fovea's ``multi_image_mode: square`` (a single view packs with one newline);
* video (``pixel_values_videos``): each frame resized to a square, bilinear 2x2 pooling after the
  projector, one newline after the last frame: fovea's frames with ``pool: bilinear``,
  ``newline: one_token``; a ``<video>`` in the prompt (``videos=``) is such a video;
* no rule for many images (``frames_above: null``): transformers runs 9 images as 9 images.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..imaging import anyres
from ..model.packing import FramesConfig
from . import hf_llava_next
from .opened import Layout

MODEL_TYPE = "llava_onevision"


def read_config(directory: Path, raw: dict):
    aspect = raw.get("vision_aspect_ratio", "anyres_max_9")
    if not isinstance(aspect, str) or anyres.parse_max_tiles(aspect) is None:
        # transformers reads N with int(value.strip("anyres_max_")): anything else fails there
        raise CheckpointError(
            f"{directory / 'config.json'}: vision_aspect_ratio {aspect!r}: expected anyres_max_N, "
            "as transformers' LlavaOnevision reads it"
        )
    config = hf_llava_next.read_config(directory, raw, MODEL_TYPE, aspect)
    config.image.multi_image_mode = "square"
    config.image.frames_above = None
    config.frames = FramesConfig(pool="bilinear", stride=2, newline="one_token")
    return config


def _read(directory: Path, raw: dict, base: str | None, tower: str | None):
    return hf_llava_next.with_tokenizer(directory, read_config(directory, raw))


LAYOUT = Layout(lambda raw: raw.get("model_type") == MODEL_TYPE, _read, hf_llava_next.sources)
