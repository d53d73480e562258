"""Writing transformers' ``LlavaNextForConditionalGeneration`` layout (``fovea convert --to hf``).

What transformers 5 writes: its ``config.json``, safetensors with its key names, a tokenizer with an
``<image>`` token (added, with an embedding row, when the source tokenizer has none),
``processor_config.json`` and a chat template. Architectures LlavaNext cannot express (another
projector, a fuser, a non-AnyRes image mode, ...) are refused with the part named, before any weight
is read. checkpoints/export.py streams the tensors through `rename` and `adjust`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError
from ..towers.base import family_of
from .jinja import chat_template

_RESAMPLE_IDS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}


class LlavaNextWriter:
    """Names, vocabulary and metadata of transformers' LlavaNext layout for one fovea config."""

    TOKENS = ("<image>",)
    """Placeholder tokens the layout's processor needs in the vocabulary."""

    def __init__(self, opened):
        self.config = opened.config
        self.refuse(self.config)
        if opened.tokenizer is None:
            raise ConfigError("the source has no tokenizer; transformers' processor needs one")
        self.tokenizer = opened.tokenizer
        missing = [t for t in self.TOKENS if t not in self.tokenizer.get_vocab()]
        if missing:
            self.tokenizer.add_tokens(missing, special_tokens=True)
        self.image_id = self.tokenizer.convert_tokens_to_ids("<image>")
        self.vocab = int(self.config.lm["vocab_size"])
        # A vocabulary without free rows for the placeholders grows to the next multiple of 64 (as
        # transformers' own conversions do); new input rows are the mean embedding, new output
        # rows zero, so no existing logit changes. A tied LM shares one matrix: its new rows are
        # zero, else the mean row would give the new ids (<image>, padding) logits of their own.
        top = max(self.tokenizer.convert_tokens_to_ids(t) for t in self.TOKENS)
        self.new_vocab = self.vocab if top < self.vocab else -(-(top + 1) // 64) * 64

    @staticmethod
    def refuse(config) -> None:
        refuse_inexpressible(config)

    def rename(self, key: str) -> str:
        for old, new in _HF_NAMES:
            if key.startswith(old):
                return new + key[len(old) :]
        raise ConfigError(f"no transformers LlavaNext name for {key!r}")

    def adjust(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        extra = self.new_vocab - self.vocab
        if extra <= 0 or name not in (
            "language_model.model.embed_tokens.weight",
            "language_model.lm_head.weight",
        ):
            return tensor
        tied = bool(self.config.lm.get("tie_word_embeddings", False))
        if name.endswith("embed_tokens.weight") and not tied:
            rows = tensor.float().mean(0, keepdim=True).to(tensor.dtype).expand(extra, -1)
        else:
            rows = tensor.new_zeros(extra, tensor.shape[1])
        return torch.cat([tensor, rows])

    def finish(self, work: Path, model) -> list[str]:
        """config.json, tokenizer, processor and chat template; returns notes for the user."""
        hf = self.hf_config(self.hf_fields())
        hf.save_pretrained(work)
        self.save_processor(work, hf)
        return self.notes()

    def hf_fields(self) -> dict:
        """The config fields LlavaNext and LlavaOnevision share."""
        cfg, tower = self.config, self.config.tower
        layers = cfg.connector.layers
        return dict(
            vision_config=dict(tower.hf_config),
            text_config={**cfg.lm, "vocab_size": self.new_vocab},
            image_token_index=self.image_id,
            vision_feature_layer=layers[0] if len(layers) == 1 else list(layers),
            vision_feature_select_strategy="default" if tower.cls_token else "full",
            image_grid_pinpoints=[list(p) for p in cfg.image.pinpoints],
            projector_hidden_act=cfg.connector.projector_act,
            multimodal_projector_bias=cfg.connector.projector_bias,
            tie_word_embeddings=bool(cfg.lm.get("tie_word_embeddings", False)),
        )

    def hf_config(self, fields: dict):
        from transformers import LlavaNextConfig

        hf = LlavaNextConfig(**fields)
        hf.architectures = ["LlavaNextForConditionalGeneration"]
        return hf

    def save_processor(self, work: Path, hf) -> None:
        from transformers import LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        cfg, image = self.config, self.config.image
        crop = image.resize == "shortest_edge_crop"
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": image.size} if crop else {"height": image.size, "width": image.size},
            crop_size={"height": image.size, "width": image.size},
            do_center_crop=crop,
            resample=_RESAMPLE_IDS[image.resample],
            image_mean=list(image.mean),
            image_std=list(image.std),
            image_grid_pinpoints=[list(p) for p in image.pinpoints],
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=self.tokenizer,
            patch_size=int(cfg.tower.hf_config.get("patch_size", 14)),
            vision_feature_select_strategy=hf.vision_feature_select_strategy,
            num_additional_image_tokens=1 if cfg.tower.cls_token else 0,
            chat_template=self.chat_template(),
        )
        processor.save_pretrained(work)

    def chat_template(self) -> str | None:
        return chat_template(self.config.template) if self.config.template else self.config.chat_template

    def notes(self) -> list[str]:
        cfg, notes = self.config, []
        if cfg.image.alpha == "drop":
            notes.append(
                "transformers' processor composites transparent images onto white; this model was set up "
                "to drop alpha (PIL convert), so RGBA inputs will differ slightly"
            )
        if family_of(cfg.tower).export_note:
            notes.append(family_of(cfg.tower).export_note)
        if cfg.image.frames_above is not None and type(self) is LlavaNextWriter:
            notes.append(
                f"transformers' LlavaNext has no frames: a prompt with more than {cfg.image.frames_above} "
                "images runs them as images there, where fovea pools them as frames"
            )
        return notes


_HF_NAMES = [
    ("tower.model.", "vision_tower."),
    ("connector.projector.0.", "multi_modal_projector.linear_1."),
    ("connector.projector.2.", "multi_modal_projector.linear_2."),
    ("lm.model.", "language_model.model."),
    ("lm.lm_head.", "language_model.lm_head."),
    ("image_newline", "image_newline"),
]


def refuse_inexpressible(config) -> None:
    """ConfigError naming the first part transformers' LlavaNext cannot express."""
    refuse_first("LlavaNext", [*shared_problems(config), *_image_problems(config)])


def refuse_first(name: str, problems: list[tuple[bool, str]]) -> None:
    for bad, what in problems:
        if bad:
            raise ConfigError(f"cannot export to transformers {name}: {what}")


def _image_problems(config) -> list[tuple[bool, str]]:
    return [
        (config.image.mode != "anyres", f"image mode {config.image.mode!r} (LlavaNext always uses AnyRes)"),
        (
            config.image.multi_image_mode not in (None, "anyres"),
            f"multi_image_mode {config.image.multi_image_mode!r}",
        ),
    ]


def shared_problems(config) -> list[tuple[bool, str]]:
    """What neither LlavaNext nor LlavaOnevision can express."""
    return [
        (
            family_of(config.tower).grid_kind != "vit",
            f"tower type {config.tower.model_type!r} (LlavaNext reads token sequences of a ViT; this "
            "tower's hidden states are feature maps)",
        ),
        (
            config.connector.fuser_type != "concat",
            f"fuser {config.connector.fuser_type!r} (LlavaNext only concatenates layers)",
        ),
        (
            config.connector.projector != "mlp2x_gelu",
            f"projector {config.connector.projector!r} (LlavaNext has mlp2x_gelu only)",
        ),
        (
            config.connector.keep_cls,
            "connector.keep_cls (LlavaNext drops CLS or keeps a CLS-free tower whole)",
        ),
        (
            config.merge != "spatial_unpad" or not config.newline,
            f"merge {config.merge!r} (LlavaNext packs spatial_unpad with newlines)",
        ),
    ]
