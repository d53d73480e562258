"""Tiny models with each registered fuser, off their init, for the registry-wide fuser tests.

The selected layers per fuser come from the tiny tower's 3 hidden states (embeddings + 2 blocks).
MMFuser reads its last layer as the query and the others as levels: 4 levels + query as the
original's [-22, -17, -12, -7, -2], which here has to repeat layers. vMLLM aggregates two groups of two
states (a one-layer group's attention weight is always 1) and then reads the selected one (-2); its CLIP variant (projection_dim) with a tiny CLIP
text tower, whose tokenizer is attached as `fovea.load` attaches a checkpoint's.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import fovea
from fovea.config import from_dict
from fovea.connectors.connector import ConnectorConfig
from fovea.tiny import tiny_text_tower, tiny_vlm

LAYERS = {"mmfuser": [0, 1, 0, 1, -2], "vmllm": [0, 1, 1, 2, -2]}
IMAGES = [(50, 90), (90, 40), (20, 20)]  # wide, tall, tiny (height, width)


def fuser_model(fuser: str, tower: str | None = None) -> fovea.VisionLanguageModel:
    """The tiny model with `fuser` in its connector, at its init; on another tiny `tower` (a
    ConvNeXt), the plain connector reads its last stage."""
    if tower is not None:
        return tiny_vlm(tower)
    model = tiny_vlm()
    config = model.config
    fields, tokenizer = {"type": fuser}, None
    if fuser == "vmllm":
        text, tokenizer = tiny_text_tower("clip_text_model", width=16)
        fields |= {"text_tower": text, "projection_dim": 16}
    config.connector = from_dict(ConnectorConfig, {"layers": LAYERS.get(fuser, [-3, -2]), "fuser": fields})
    built = fovea.VisionLanguageModel(config, model.tokenizer)
    if tokenizer is not None:
        built.connector.fuser.tokenizer = tokenizer
    return built


def off_init(model) -> None:
    """Every connector parameter a small random step off its init, as a first optimizer step
    would move it. A fuser may start as an exact identity behind zero-initialised gates (MMFuser's
    LayerScale gammas), where at step 0 no gradient reaches its inner weights by design."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.connector.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8")) for h, w in IMAGES]


def engine_answers(model, prompts: list[str], images: list, tokens: int) -> list[str]:
    """Greedy answers of the batching engine, all requests submitted at once (one image each)."""
    import time

    from fovea.infer.engine import Engine, Request

    engine = Engine(model, max_batch=8, max_wait=0.05)
    results = [{} for _ in prompts]
    try:
        for prompt, image, box in zip(prompts, images, results):
            request = Request([{"role": "user", "content": prompt}], images=[image], max_tokens=tokens,
                              emit=lambda kind, value, box=box: box.setdefault(kind, value))  # fmt: skip
            engine.submit(request)
        deadline = time.time() + 60
        while not all("done" in r or "error" in r for r in results) and time.time() < deadline:
            time.sleep(0.01)
    finally:
        engine.close()
    return [r["done"].text.strip() for r in results]
