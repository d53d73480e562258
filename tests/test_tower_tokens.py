"""Token counts come from the tower's feature levels before anything runs: for every registered
tower family (ViTs with and without CLS, MLCD's RoPE ViT, UNICOM, ConvNeXt) in every image mode,
the placeholders `prepare` inserts equal the visual tokens the model emits, on wide, tall and tiny
images. A ConvNeXt with ConvLLaVA's fifth stage gives (R/64)^2 tokens for a square of side R."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fovea.tiny import tiny_vlm
from fovea.towers.presets import resolve_tower
from test_towers import _one_tiny_per_family

MODES = ["square", "pad", "anyres", "anyres_max_4"]


def _images():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))
        for h, w in [(50, 190), (210, 40), (9, 9)]
    ]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tower", _one_tiny_per_family())
def test_count_tokens_equals_what_the_model_emits(tower, mode):
    model = tiny_vlm(tower, mode=mode)
    inputs = model.prepare("<image><image><image>\nWhat is it?", images=_images())
    with torch.no_grad():
        packed = model.encode_images(inputs.images)
    for layout, tokens in zip(inputs["image_layouts"], packed):
        assert tokens.shape[0] == model.num_image_tokens(layout)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == sum(t.shape[0] for t in packed)


@pytest.mark.parametrize("tower", _one_tiny_per_family())
def test_frames_count_equals_what_the_model_emits(tower):
    """Nine images (more than frames_above, 8) become padded, pooled one-frame videos, and a video
    of four frames sits beside them: counts equal what every tower family emits."""
    model = tiny_vlm(tower, mode="anyres")
    images = (_images() * 3)[:9]
    frames = _images()[:2] * 2
    inputs = model.prepare("<image>" * 10 + "\nWhat changed?", images=[*images, frames])
    layouts = inputs["image_layouts"]
    assert [layout.frames for layout in layouts] == [1] * 9 + [4]
    assert {layout.mode for layout in layouts[:9]} == {"pad"} and layouts[9].mode == "square"
    with torch.no_grad():
        packed = model.encode_images(inputs.images)
    for layout, tokens in zip(layouts, packed):
        assert tokens.shape[0] == model.num_image_tokens(layout)
    single = model.num_image_tokens(model.processor.layout((50, 50), "pad"))
    assert model.num_image_tokens(layouts[0]) < single  # pooled


@pytest.mark.parametrize("side", [768, 1024, 1536])
def test_a_five_stage_convnext_gives_r_over_64_squared_tokens(side):
    from accelerate import init_empty_weights

    from fovea.towers.base import VisionTower

    with init_empty_weights():
        tower = VisionTower(resolve_tower(f"convllava-convnext-{side}").tower_config())
    rows, cols = tower.feature_levels()[-1].grid(side, side)
    assert rows * cols == (side // 64) ** 2
