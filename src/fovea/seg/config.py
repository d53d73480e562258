"""What a segmenting model adds to its config: SAM's architecture and the ``[SEG]`` token."""

from __future__ import annotations

from dataclasses import dataclass

from .head import SEG_TOKEN


@dataclass(kw_only=True)
class SegConfig:
    sam: dict
    """transformers' SamConfig as a dict (SAM-H for MLCD-Seg): the model rebuilds without SAM's files."""
    token: str = SEG_TOKEN
    token_id: int
    """The token's id in the LM's vocabulary (added to the tokenizer, embeddings resized)."""

    def sam_config(self):
        from transformers import SamConfig

        return SamConfig(**self.sam)

    @property
    def input_size(self) -> int:
        """SAM's square input side (1024 for SAM-H): the longest side is resized to it, then padded."""
        return int(self.sam.get("vision_config", {}).get("image_size", 1024))

    def processor(self):
        """SAM's image transform (`SamImageProcessorPil`: SAM's mean and std, zero padding)."""
        from transformers import SamImageProcessorPil

        side = self.input_size
        return SamImageProcessorPil(size={"longest_edge": side}, pad_size={"height": side, "width": side},
                                    mask_size={"longest_edge": side // 4},
                                    mask_pad_size={"height": side // 4, "width": side // 4})  # fmt: skip
