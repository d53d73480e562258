"""MLCD-Seg's mask path: the ``[SEG]`` token's last hidden state prompts SAM's mask decoder.

As `deepglint/unicom` ``mlcd_vl/downstream`` builds it (reference next-capabilities.md §2), with
transformers' `SamModel` holding SAM:

* ``text2sam``: Linear(LM width -> 256) -> GELU -> Linear(256 -> 256), applied to the LM's last
  hidden state (after its final norm) at each ``[SEG]`` position;
* each projected ``[SEG]`` is SAM's only sparse prompt (no points, boxes or mask: the dense prompt
  is SAM's no-mask embedding), through the mask decoder with ``multimask_output=False``; the
  predicted IoU is not used;
* the 256 x 256 low-resolution logits are brought back as SAM's ``postprocess_masks`` does:
  bilinear to the padded input square, the padding cropped, bilinear to the image's size; they
  stay logits (a pixel is in the mask when its logit is above 0);
* SAM's input (`sam_inputs`): the longest side resized to SAM's input size (1024 for SAM-H), SAM's
  mean and std, zero padding to the square; transformers' `SamImageProcessorPil` does exactly that;
* the image encoder is frozen (its embeddings are computed without a graph); the prompt encoder,
  mask decoder and ``text2sam`` train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SEG_TOKEN = "[SEG]"


@dataclass
class SamInputs:
    """One image as SAM sees it."""

    pixels: torch.Tensor
    """(3, S, S) normalised and zero-padded."""
    original: tuple[int, int]
    """(height, width) of the image."""
    resized: tuple[int, int]
    """(height, width) after the longest side was resized to S (the rest is padding)."""


def sam_inputs(processor, images: list) -> list[SamInputs]:
    """PIL images -> SAM's inputs, through `SamImageProcessorPil` (the SAM checkpoint's own settings)."""
    batch = processor(images=images, return_tensors="pt")
    return [
        SamInputs(batch["pixel_values"][i], tuple(batch["original_sizes"][i].tolist()),
                  tuple(batch["reshaped_input_sizes"][i].tolist()))
        for i in range(len(images))
    ]  # fmt: skip


class SegHead(nn.Module):
    """SAM plus the [SEG] projection: prompts (k, LM width) and one image -> mask logits (k, H, W)."""

    def __init__(self, sam: nn.Module, lm_width: int):
        super().__init__()
        # SamModel's prompt encoder and the model share one positional table (its _tied_weights_keys);
        # shared as one module here, so a model built from its config (or on the meta device) has it
        sam.prompt_encoder.shared_embedding = sam.shared_image_embedding
        self.sam = sam
        width = sam.config.prompt_encoder_config.hidden_size
        self.text2sam = nn.Sequential(nn.Linear(lm_width, width), nn.GELU(), nn.Linear(width, width))
        self.sam.vision_encoder.requires_grad_(False)

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) -> (n, 256, S/16, S/16), without a graph (the image encoder is frozen)."""
        first = next(self.sam.vision_encoder.parameters())
        with torch.no_grad():
            return self.sam.get_image_embeddings(pixels.to(first.device, first.dtype))

    def forward(self, states: torch.Tensor, embeddings: torch.Tensor, image: SamInputs) -> torch.Tensor:
        """`states` (k, LM width): the [SEG] hidden states of one image; `embeddings` (1, 256, h, w)
        its SAM image embeddings -> (k, H, W) float32 mask logits at the image's size."""
        prompts = self.text2sam(states)  # (k, 256)
        decoder = self.sam.mask_decoder
        _, channels, height, width = embeddings.shape
        dense = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            1, channels, height, width
        )
        low, _ = decoder(
            image_embeddings=embeddings,
            image_positional_embeddings=self.sam.get_image_wide_positional_embeddings(),
            sparse_prompt_embeddings=prompts[None, :, None, :].to(embeddings.dtype),  # (1, k, 1, 256)
            dense_prompt_embeddings=dense.to(embeddings.dtype),
            multimask_output=False,
        )[:2]
        side = image.pixels.shape[-1]
        return upscale(low[0, :, 0], image.original, image.resized, side)


def upscale(
    low: torch.Tensor, original: tuple[int, int], resized: tuple[int, int], side: int
) -> torch.Tensor:
    """(k, h, w) low-resolution logits -> (k, H, W) float32, as SAM's ``postprocess_masks``: to the
    padded square, the padding cropped, to the image's size (bilinear, corners not aligned)."""
    masks = F.interpolate(low[:, None].float(), (side, side), mode="bilinear", align_corners=False)
    masks = masks[..., : resized[0], : resized[1]]
    return F.interpolate(masks, original, mode="bilinear", align_corners=False)[:, 0]
