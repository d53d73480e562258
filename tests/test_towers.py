"""Every tower preset: builds, exposes all hidden states, and its full size matches the facts."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from transformers import CLIPVisionConfig, CLIPVisionModel

from fovea.errors import ConfigError
from fovea.towers import TOWER_PRESETS, TowerConfig, VisionTower, build_tower, resolve_tower

TINY = [n for n in TOWER_PRESETS if n.endswith("-tiny")]
FULL = [n for n in TOWER_PRESETS if not n.endswith("-tiny")]

# Published parameter counts of the vision towers, in millions (±2%).
PARAMS_M = {
    "clip-vit-l14-336": 304,
    "mlcd-vit-l14-336": 304,
    "siglip-so400m-384": 428,
    "dfn5b-vit-h14-378": 632,
    "mlcd-vit-bigg14-336": 1845,
    "mlcd-vit-bigg14-448": 1845,
    # RICE: the hub lists 0.3B; a CLIP ViT-L/14 (304M) less its position table (RoPE2D instead)
    "rice-vit-l14-560": 303,
    # ConvLLaVA: LAION's ConvNeXt-L trunk 196.2M (timm's convnext_large, 197.8M, less its 1000-class
    # head); with the fifth stage 669.2M, the 1.34 GB of the released bf16 pytorch_model.bin.
    "laion-convnext-large-512": 196.2,
    "convllava-convnext-768": 669.2,
    "convllava-convnext-1024": 669.2,
    "convllava-convnext-1536": 669.2,
    # UNICOM publishes no counts: these follow its vision_transformer.py (the flatten head's
    # Linear(N*D -> D) is most of them: 29M, 116M, 269M, 605M).
    "unicom-vit-b32": 116.7,
    "unicom-vit-b16": 202.0,
    "unicom-vit-l14": 572.3,
    "unicom-vit-l14-336": 908.2,
}


def test_every_preset_has_a_tiny_twin():
    assert sorted(f"{n}-tiny" for n in FULL) == sorted(TINY)


@pytest.mark.parametrize("name", TINY)
def test_tiny_tower_forward(name):
    tower, image = build_tower(name)
    size = image["size"]
    out = tower(torch.randn(3, 3, size, size))
    levels = tower.feature_levels()  # what the tower promised before running
    assert len(out.hidden_states) == len(levels) == tower.num_layers + 1
    for state, level in zip(out.hidden_states, levels):
        rows, cols = level.grid(size, size)
        assert state.shape == (3, level.prefix_tokens + rows * cols, level.width)
    assert out.grid == levels[-1].grid(size, size)
    assert out.num_prefix_tokens == (0 if name.startswith(("siglip", "unicom", "convllava", "laion")) else 1)


@pytest.mark.parametrize("name", FULL)
def test_full_preset_sizes(name):
    preset = TOWER_PRESETS.get(name)
    with init_empty_weights():
        tower = VisionTower(preset.tower_config())
    params = sum(p.numel() for p in tower.parameters()) / 1e6
    assert abs(params - PARAMS_M[name]) / PARAMS_M[name] < 0.02, params
    if preset.hub_id is not None:  # UNICOM's weights are release files, not hub repos
        assert resolve_tower(preset.hub_id) is preset  # known hub ids resolve offline
    else:
        assert preset.weights_url is not None


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'mlcd-vit-bigg14-448'"):
        resolve_tower("mlcd-vit-bigg14-488")


def test_unregistered_type_needs_has_cls():
    with pytest.raises(ValueError, match="has_cls"):
        TowerConfig(hf_config={"model_type": "dinov2"})


def test_tower_directory_loads_its_weights(tmp_path):
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    reference = CLIPVisionModel(cfg).eval()
    reference.save_pretrained(tmp_path)
    tower, image = build_tower(str(tmp_path), pretrained=True)
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True).hidden_states[-2]
        assert torch.equal(tower(pixels).hidden_states[-2], expected)
    assert image["size"] == 28


@pytest.mark.parametrize("name", TINY)
def test_shortened_tower_gives_the_same_states_and_skips_the_rest(name):
    tower, image = build_tower(name)
    pixels = torch.randn(2, 3, image["size"], image["size"])
    ran = []
    hooks = [
        layer.register_forward_hook(lambda *a, i=i: ran.append(i))
        for i, layer in enumerate(tower.blocks()[1])
    ]
    with torch.no_grad():
        full, short = tower(pixels).hidden_states, tower(pixels, depth=1).hidden_states
    for hook in hooks:
        hook.remove()
    assert ran == [*range(tower.num_layers), 0]  # the full run, then the shortened one stops after block 0
    assert len(short) == 2 and all(torch.equal(a, b) for a, b in zip(short, full[:2]))
    assert len(tower.blocks()[1]) == tower.num_layers  # restored


def _one_tiny_per_family() -> list[str]:
    from fovea.towers.base import TOWER_FAMILIES

    first = {}
    for name in TINY:
        first.setdefault(resolve_tower(name).tower["hf_config"]["model_type"], name)
    assert sorted(first) == TOWER_FAMILIES.names()  # every registered family has a tiny preset
    return list(first.values())


@pytest.mark.parametrize("name", _one_tiny_per_family())
def test_tower_parts_follow_the_towers_own_blocks(name):
    """``tower.layers.N`` (``tower.stages.N`` for a hierarchical tower) is exactly block N's
    parameters, wherever the family keeps its blocks; the other unit is refused by name."""
    from types import SimpleNamespace

    from fovea.tiny import tiny_vlm
    from fovea.train.parts import assign
    from fovea.train.validate import check_parts_match

    model = tiny_vlm(name)
    path, blocks = model.tower.blocks()
    unit = path.rsplit(".", 1)[-1]
    rates = assign(model, {f"tower.{unit}.1": 1e-4})
    expected = {f"tower.model.{path}.1.{n}" for n, _ in blocks[1].named_parameters()}
    assert set(rates) == expected and expected
    other = "stages" if unit == "layers" else "layers"
    recipe = SimpleNamespace(stages=[SimpleNamespace(train={f"tower.{other}.0": 1e-4})])
    with pytest.raises(ConfigError, match=f"this tower's blocks are its {unit}"):
        check_parts_match(recipe, model)


def test_a_hub_id_no_preset_knows_is_read_from_its_download(tmp_path, monkeypatch):
    """(vMLLM's CLIP-B/32 and SigLIP-B/16 variants name towers fovea has no preset for.)"""
    from transformers import CLIPConfig

    from fovea.towers import presets

    CLIPConfig(vision_config={"hidden_size": 48, "patch_size": 32, "image_size": 224}).save_pretrained(
        tmp_path
    )
    real = presets.resolve_directory
    monkeypatch.setattr(
        presets, "resolve_directory", lambda source: tmp_path if source == "org/clip-b32" else real(source)
    )
    preset = resolve_tower("org/clip-b32")
    assert preset.hub_id == "org/clip-b32" and preset.tower["hf_config"]["model_type"] == "clip_vision_model"
    assert preset.tower["hf_config"]["hidden_size"] == 48 and preset.image["size"] == 224
    with pytest.raises(ConfigError, match="is no preset"):
        resolve_tower("org/unreachable")  # the socket guard: no download


def test_the_token_table_in_docs_is_the_one_the_code_computes():
    from pathlib import Path

    from fovea.towers.presets import TOKEN_ROWS, token_arithmetic

    docs = (Path(__file__).parents[1] / "docs" / "towers.md").read_text()
    assert token_arithmetic(TOKEN_ROWS) in docs
