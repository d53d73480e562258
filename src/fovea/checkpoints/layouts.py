"""Every checkpoint layout fovea reads, in one registry.

An entry is a `Layout` (checkpoints/opened.py): `detect` a raw config.json, `read` the model's config
and tokenizer, the weight `sources` with their key maps, what to `attach` beside the weights and,
for a layout fovea writes, its `writer` (``fovea convert --to export_as``). `fovea.load` and
`fovea convert` take the first entry that detects a checkpoint. A new layout is its own module with
a ``LAYOUT`` plus one line here.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..registry import Registry
from . import fovea_format, hf_llava_next, hf_llava_onevision, llava_original
from .opened import Layout

LAYOUTS: Registry[Layout] = Registry("checkpoint layout")
LAYOUTS.add(
    "fovea", fovea_format.LAYOUT, 'fovea\'s own: config.json with "format": "fovea" (written by --to fovea)'
)
LAYOUTS.add(
    "llava_next", hf_llava_next.LAYOUT, "transformers' LlavaNextForConditionalGeneration (written by --to hf)"
)
LAYOUTS.add(
    "llava_onevision",
    hf_llava_onevision.LAYOUT,
    "transformers' LlavaOnevisionForConditionalGeneration (anyres_max, base-view multi-image, pooled video)",
)
LAYOUTS.add(
    "llava_original",
    llava_original.LAYOUT,
    "original LLaVA-NeXT / LLaVA-1.5: llava_qwen, llava_llama, llava_mistral, or llava with mm_vision_tower "
    "(MMFuser, vMLLM and ConvLLaVA recognised by their weights)",
)


def layout_of(directory: Path, raw: dict) -> Layout:
    """The registered layout that recognises `raw` (config.json), or one line naming what it is."""
    for name in LAYOUTS:
        if LAYOUTS.get(name).detect(raw):
            return LAYOUTS.get(name)
    kind = raw.get("model_type") or raw.get("format") or "unknown"
    raise CheckpointError(
        f"{directory / 'config.json'}: unsupported checkpoint layout {kind!r} ({', '.join(LAYOUTS)})"
    )
