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
from .inputs import ImageBatch, ModelInputs, images_of
from .kv_cache import cache_kwargs
from .packing import count_tokens, merge_tokens, pack_image
from .prompting import PromptMixin
from .saving import save_model

logger = logging.getLogger(__name__)


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
        self.seg = None
        if config.seg is not None:  # MLCD-Seg: SAM and the [SEG] projection (seg/head.py)
            from transformers import SamModel

            from ..seg.head import SegHead

            self.seg = SegHead(SamModel(config.seg.sam_config()), lm_width)
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
        config = self.config
        return count_tokens(
            layout,
            self.token_grid(),
            self.connector.extra_tokens(),
            config.merge,
            config.newline,
            config.frames,
        )

    # -- forward -------------------------------------------------------------------------------

    def encode_images(self, images: ImageBatch) -> list[torch.Tensor]:
        """All views (V, 3, S, S) -> one (n_i, D) token sequence per image; the fuser sees each
        view's batch row and each row's question."""
        pixel_values = images.pixel_values
        tower_out = self.tower(pixel_values.to(self.tower_device), depth=self.connector.tower_depth())
        size = (pixel_values.shape[-2], pixel_values.shape[-1])
        views = self.connector(
            tower_out, size, samples=images.view_rows(), questions=images.questions
        )  # (V, N', D)
        side = self.connector.out_grid(size)
        packed, start = [], 0
        for layout in images.layouts:
            chunk = views[start : start + layout.num_views]
            packed.append(
                pack_image(chunk, layout, side, self.config.merge, self.image_newline, self.config.frames)
            )
            start += layout.num_views
        return packed

    def embed(self, input_ids: torch.Tensor, images: ImageBatch | None = None) -> torch.Tensor:
        """Token ids (B, T) + images -> input embeddings (B, T, D) with visual tokens merged."""
        mask = input_ids == self.config.image_token_id
        # The placeholder may lie outside the vocabulary (LLaVA's -200): look up a real id there;
        # those rows are overwritten by visual tokens anyway.
        embeds = self.lm.get_input_embeddings()(input_ids.masked_fill(mask, 0))
        if images is None:
            if mask.any():
                raise ValueError(
                    f"the text has {int(mask.sum())} image placeholder tokens but no images were given"
                )
            return embeds
        features = torch.cat(self.encode_images(images))
        return merge_tokens(embeds, mask, features.to(embeds.device))

    def embed_inputs(self, inputs: ModelInputs) -> torch.Tensor:
        """The one place model inputs become input embeddings (see model/inputs.py)."""
        return self.embed(inputs.input_ids.to(self.device), inputs.images)

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
        sam_images: list | None = None,
        position_ids: torch.Tensor | None = None,
    ):
        """Returns the LM's ``CausalLMOutputWithPast`` (logits (B, T or logits_to_keep, vocab));
        ``cache`` is a transformers ``Cache`` (passed under the name the installed release uses).
        `position_ids`: packed rows (data/packing.py; no attention mask, no cache).
        With `sam_images` (each row's images as SAM sees them), a segmenting model's teacher-forced
        `seg.model.SegOutput` instead: logits and each [SEG]'s mask (through the one forward DDP wraps)."""
        if sam_images is not None:
            from ..seg.model import seg_forward

            inputs = ModelInputs(
                input_ids, attention_mask, pixel_values, image_layouts, image_samples, questions
            )
            return seg_forward(self, inputs, sam_images)
        embeds = self.embed(input_ids, images_of(pixel_values, image_layouts, image_samples, questions))
        return self.lm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            labels=labels,
            use_cache=use_cache,
            **cache_kwargs(cache),
            logits_to_keep=logits_to_keep,
            **({"position_ids": position_ids.to(embeds.device)} if position_ids is not None else {}),
        )

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
