"""Writing transformers' ``LlavaOnevisionForConditionalGeneration`` layout, and choosing it.

``fovea convert --to hf`` writes LlavaOnevision when the model needs it (`needs_onevision`: the
``anyres_max_N`` shrink, base-view multi-image, or pooled video with one newline) and LlavaNext
otherwise. The weights have LlavaNext's names; the config adds ``vision_aspect_ratio`` and
``video_token_index`` (a ``<video>`` token is added like ``<image>``).

What LlavaOnevision runs differently from a fovea model is refused by name, never changed:
video newlines other than one after the last frame (MLCD-Embodied's ``grid``), pooling other than
bilinear by 2, a many-images rule (transformers runs 9 images as 9 images), several images other
than by their squashed base view. transformers' processor cannot be saved without torchvision,
so its three parts are written as files: the image processor by transformers, the video
processor's and the processor's settings as JSON in transformers' own file names.
"""

from __future__ import annotations

import json
from pathlib import Path

from .llava_next_writer import _RESAMPLE_IDS, LlavaNextWriter, refuse_first, shared_problems


def needs_onevision(config) -> bool:
    image, frames = config.image, config.frames
    return (
        image.mode.startswith("anyres_max")
        or image.multi_image_mode == "square"
        or (frames.position(config.newline) == "one_token" and image.frames_above is None)
    )


def hf_writer(opened):
    """The writer of ``--to hf``: LlavaOnevision when the model needs it, else LlavaNext."""
    return (LlavaOnevisionWriter if needs_onevision(opened.config) else LlavaNextWriter)(opened)


class LlavaOnevisionWriter(LlavaNextWriter):
    TOKENS = ("<image>", "<video>")

    @staticmethod
    def refuse(config) -> None:
        image, frames = config.image, config.frames
        newline = frames.position(config.newline)
        refuse_first("LlavaOnevision", [
            *shared_problems(config),
            (not image.mode.startswith("anyres"), f"image mode {image.mode!r} (LlavaOnevision uses AnyRes)"),
            (
                image.multi_image_mode != "square" or image.resize != "squash",
                f"multi_image_mode {image.multi_image_mode!r} with resize {image.resize!r} (LlavaOnevision "
                "runs each of several images as its base view: resized to a square, squash)",
            ),
            (
                newline != "one_token",
                f"frames.newline {newline!r} (LlavaOnevision puts one newline after a video's last frame: "
                "one_token; MLCD-Embodied's grid has no transformers form)",
            ),
            (frames.pool != "bilinear" or frames.stride != 2, f"frames pool {frames.pool!r} by {frames.stride} "
             "(LlavaOnevision pools bilinear by 2)"),
            (image.frames_above is not None, f"image.frames_above {image.frames_above} (LlavaOnevision "
             "runs many images as images; set it to null to export)"),
        ])  # fmt: skip

    def aspect_ratio(self) -> str:
        """anyres_max_N; a plain AnyRes model gets the largest grid of its pinpoints as N, so the
        shrink never applies (its unpadded map is never larger)."""
        image = self.config.image
        if image.mode.startswith("anyres_max"):
            return image.mode
        tiles = max((h // image.size) * (w // image.size) for h, w in image.pinpoints)
        return f"anyres_max_{tiles}"

    def hf_config(self, fields: dict):
        from transformers import LlavaOnevisionConfig

        video_id = self.tokenizer.convert_tokens_to_ids("<video>")
        hf = LlavaOnevisionConfig(
            **fields, video_token_index=video_id, vision_aspect_ratio=self.aspect_ratio()
        )
        hf.architectures = ["LlavaOnevisionForConditionalGeneration"]
        return hf

    def save_processor(self, work: Path, hf) -> None:
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil,
        )

        image = self.config.image
        common = {
            "size": {"height": image.size, "width": image.size},
            "resample": _RESAMPLE_IDS[image.resample],
            "image_mean": list(image.mean),
            "image_std": list(image.std),
        }
        LlavaOnevisionImageProcessorPil(
            **common, image_grid_pinpoints=[list(p) for p in image.pinpoints]
        ).save_pretrained(work)
        video = {**common, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "do_convert_rgb": True, "video_processor_type": "LlavaOnevisionVideoProcessor",
                 "processor_class": "LlavaOnevisionProcessor"}  # fmt: skip
        (work / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
        side = self.config.tower.hf_config.get("image_size", image.size) // self.config.tower.hf_config.get(
            "patch_size", 14
        )
        processor = {
            "processor_class": "LlavaOnevisionProcessor",
            "num_image_tokens": side * side,
            "vision_feature_select_strategy": hf.vision_feature_select_strategy,
            "vision_aspect_ratio": hf.vision_aspect_ratio,
        }
        (work / "processor_config.json").write_text(json.dumps(processor, indent=2))
        template = self.chat_template()
        if template:
            (work / "chat_template.jinja").write_text(template)
        self.tokenizer.save_pretrained(work)
