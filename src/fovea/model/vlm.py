"""VisionLanguageModel: tower -> connector -> packed visual tokens merged into any causal LM.

Shapes: V views (tiles) over all images, N patch tokens per view, D_v tower width, D LM width,
B batch, T text length. The language model is an unmodified transformers ``*ForCausalLM``; fovea
only writes visual tokens into its input embeddings where the image placeholder id sits.

    pixels (V, 3, S, S) -> tower -> hidden states -> connector -> (V, N', D)
        -> pack per image (base view + unpadded tiles + newlines) -> merge into (B, T, D) -> LM
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from ..connectors.connector import Connector
from ..imaging.processor import ImageLayout, ImageProcessor
from ..towers.base import VisionTower
from .config import VLMConfig
from .kv_cache import cache_kwargs
from .packing import count_tokens, merge_tokens, pack_image
from .prompting import PromptMixin
from .saving import save_model

logger = logging.getLogger(__name__)

IMAGE_INPUTS = ("pixel_values", "image_layouts", "image_samples", "questions")
"""The fields besides ``input_ids`` that reach the visual side: pixels, each image's layout and
batch row, and each row's question (for question-aware fusers). `prepare`, `prepare_chat`, the
training collator and `join_inputs` build them; `embed_inputs` and the training loop read them."""


def image_inputs(inputs: dict) -> dict:
    """The `IMAGE_INPUTS` of a prepared-inputs or batch dict, as keyword arguments."""
    return {name: inputs.get(name) for name in IMAGE_INPUTS}


class VisionLanguageModel(PromptMixin, nn.Module):
    """A LLaVA-NeXT-style model; see the module docstring for the data flow."""

    def __init__(
        self,
        config: VLMConfig,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        tower: VisionTower | None = None,
        lm: nn.Module | None = None,
    ):
        """Build from `config` (random weights), or around a pre-built `tower` / `lm` (pretrained)."""
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.checkpoint_dir: Path | None = None
        """The directory `fovea.load` read this model from (None: built in memory)."""
        self.processor = ImageProcessor(config.image)
        self.tower = tower if tower is not None else VisionTower(config.tower)
        if lm is None:
            lm = AutoModelForCausalLM.from_config(
                config.lm_config(), attn_implementation=config.attn_implementation
            )
        self.lm = lm
        lm_width = self.lm.config.hidden_size
        self.connector = Connector(config.connector, levels=self.tower.feature_levels(), lm_width=lm_width)
        if config.newline:
            # LLaVA-NeXT's init: randn * D^-1/2 (overwritten when a checkpoint is loaded).
            self.image_newline = nn.Parameter(torch.randn(lm_width) / math.sqrt(lm_width))
        else:
            self.register_parameter("image_newline", None)

    # -- geometry ------------------------------------------------------------------------------

    def token_grid(self) -> tuple[int, int]:
        """(rows, cols) of visual tokens one view yields."""
        size = self.config.image.size
        return self.connector.out_grid((size, size))

    def num_image_tokens(self, layout: ImageLayout) -> int:
        """Visual tokens an image with this layout becomes (known before running anything)."""
        return count_tokens(
            layout, self.token_grid(), self.connector.extra_tokens(), self.config.merge, self.config.newline
        )

    # -- forward -------------------------------------------------------------------------------

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        layouts: list[ImageLayout],
        samples: list[int] | None = None,
        questions: list[str] | None = None,
    ) -> list[torch.Tensor]:
        """All views (V, 3, S, S) -> one (n_i, D) token sequence per image. `samples` gives the
        batch row each image belongs to (default: all row 0) and `questions` one text per row;
        the fuser sees both per view."""
        expected = sum(layout.num_views for layout in layouts)
        if pixel_values.shape[0] != expected:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} views but the image layouts describe {expected}"
            )
        rows = samples if samples is not None else [0] * len(layouts)
        if len(rows) != len(layouts):
            raise ValueError(f"image_samples names {len(rows)} images but there are {len(layouts)} layouts")
        if questions is not None and max(rows, default=-1) >= len(questions):
            raise ValueError(
                f"an image belongs to row {max(rows)} but only {len(questions)} questions were given"
            )
        per_view = torch.tensor([r for r, layout in zip(rows, layouts) for _ in range(layout.num_views)])
        tower_out = self.tower(pixel_values.to(self.tower_device), depth=self.connector.tower_depth())
        size = (pixel_values.shape[-2], pixel_values.shape[-1])
        views = self.connector(tower_out, size, samples=per_view, questions=questions)  # (V, N', D)
        side = self.connector.out_grid(size)
        packed, start = [], 0
        for layout in layouts:
            chunk = views[start : start + layout.num_views]
            packed.append(pack_image(chunk, layout, side, self.config.merge, self.image_newline))
            start += layout.num_views
        return packed

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_layouts: list[ImageLayout] | None = None,
        image_samples: list[int] | None = None,
        questions: list[str] | None = None,
    ) -> torch.Tensor:
        """Token ids (B, T) + images -> input embeddings (B, T, D) with visual tokens merged."""
        mask = input_ids == self.config.image_token_id
        # The placeholder may lie outside the vocabulary (LLaVA's -200): look up a real id there;
        # those rows are overwritten by visual tokens anyway.
        embeds = self.lm.get_input_embeddings()(input_ids.masked_fill(mask, 0))
        if pixel_values is None or not image_layouts:
            if mask.any():
                raise ValueError(
                    f"the text has {int(mask.sum())} image placeholder tokens but no images were given"
                )
            return embeds
        features = torch.cat(self.encode_images(pixel_values, image_layouts, image_samples, questions))
        return merge_tokens(embeds, mask, features.to(embeds.device))

    def embed_inputs(self, inputs: dict) -> torch.Tensor:
        """The one place model inputs become input embeddings. `inputs` is what `prepare`,
        `prepare_chat`, `join_inputs` and the training collator build: ``input_ids`` plus the
        `IMAGE_INPUTS`. A new input is added there and read here, not threaded through every caller."""
        return self.embed(inputs["input_ids"].to(self.device), **image_inputs(inputs))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_layouts: list[ImageLayout] | None = None,
        labels: torch.Tensor | None = None,
        cache=None,
        image_samples: list[int] | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        questions: list[str] | None = None,
    ):
        """Returns the LM's ``CausalLMOutputWithPast`` (logits (B, T or logits_to_keep, vocab));
        ``cache`` is a transformers ``Cache`` (passed under the name the installed release uses)."""
        embeds = self.embed(input_ids, pixel_values, image_layouts, image_samples, questions)
        return self.lm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            labels=labels,
            use_cache=use_cache,
            **cache_kwargs(cache),
            logits_to_keep=logits_to_keep,
        )

    @staticmethod
    def join_inputs(prepared: list[dict]) -> dict:
        """The `IMAGE_INPUTS` of several single-row inputs as one batch (row i = prepared[i]):
        pixels concatenated, layouts in order, each image's row renumbered, one question per row."""
        pixels = [p["pixel_values"] for p in prepared if p.get("pixel_values") is not None]
        layouts, samples = [], []
        for row, p in enumerate(prepared):
            layouts.extend(p.get("image_layouts") or [])
            samples.extend(row for _ in p.get("image_layouts") or [])
        questions = [question for p in prepared for question in p.get("questions") or [""]]
        return {
            "pixel_values": torch.cat(pixels) if pixels else None,
            "image_layouts": layouts or None,
            "image_samples": samples or None,
            "questions": questions,
        }

    @property
    def tower_device(self) -> torch.device:
        return next(self.tower.parameters()).device

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.get_input_embeddings().weight.dtype

    # -- persistence ---------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path, max_shard_size: int = 5 * 1024**3) -> Path:
        """Write config.json, safetensors (sharded above `max_shard_size` bytes) and the tokenizer."""
        return save_model(self, Path(directory), max_shard_size)
