"""ConvNeXt towers (ConvLLaVA): weights from timm / OpenCLIP state dicts, and the fifth stage added as
the original adds it, saved and reloaded by transformers as a five-stage ConvNeXt."""

from __future__ import annotations

import pytest
import torch
from transformers import ConvNextModel

from fovea.errors import ConfigError
from fovea.towers.convnext import add_stage
from fovea.towers.presets import build_tower

TINY = "laion-convnext-large-512-tiny"


def _timm_names(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ConvNextModel keys -> timm's ConvNeXt names (timm/models/convnext.py)."""
    out = {}
    for key, tensor in hf.items():
        name = (key.replace("embeddings.patch_embeddings.", "stem.0.").replace("embeddings.layernorm.", "stem.1.")
                .replace("encoder.stages.", "stages.").replace("downsampling_layer.", "downsample.")
                .replace(".layers.", ".blocks.").replace("dwconv", "conv_dw").replace(".layernorm.", ".norm.")
                .replace("pwconv1", "mlp.fc1").replace("pwconv2", "mlp.fc2").replace("layer_scale_parameter", "gamma"))  # fmt: skip
        out[name] = tensor
    return out


@pytest.mark.parametrize("form", ["timm", "open_clip"])
def test_timm_and_open_clip_state_dicts_load(tmp_path, form):
    source, _ = build_tower(TINY)
    for p in source.parameters():
        torch.nn.init.normal_(p, std=0.2)
    state = _timm_names(source.model.state_dict()) | {
        "head.norm.weight": torch.ones(32),
        "head.fc.weight": torch.ones(3, 32),
    }
    if form == "open_clip":
        state = {f"visual.trunk.{k}": v for k, v in state.items()}
        state |= {"visual.head.mlp.fc1.weight": torch.ones(4, 32), "token_embedding.weight": torch.ones(5, 4),
                  "transformer.resblocks.0.ln_1.weight": torch.ones(4), "logit_scale": torch.ones(())}  # fmt: skip
    torch.save(state, tmp_path / "convnext.pt")
    tower, image = build_tower(TINY, weights=tmp_path / "convnext.pt")
    pixels = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        for a, b in zip(tower(pixels).hidden_states, source(pixels).hidden_states):
            assert torch.equal(a, b)


def test_the_fifth_stage_is_initialised_as_the_original_and_reloads_in_transformers(tmp_path):
    tower, _ = build_tower(TINY)
    add_stage(tower, depth=2, width=64)
    stage = tower.model.encoder.stages[4]
    assert [layer.drop_path.__class__.__name__ for layer in stage.layers] == ["Identity", "Identity"]
    assert all(torch.all(layer.layer_scale_parameter == 1e-6) for layer in stage.layers)
    norm = stage.downsampling_layer[0]
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
    conv = stage.downsampling_layer[1]
    bound = (1 / (conv.in_channels * 4)) ** 0.5  # PyTorch's default: kaiming_uniform(a=sqrt 5) on fan_in
    assert conv.weight.abs().max() <= bound and conv.weight.std() > bound / 3  # not normal(0, 0.02)
    assert tower.config.hf_config["depths"][-1] == 2 and tower.config.hf_config["num_stages"] == 5
    tower.model.save_pretrained(tmp_path)
    again = ConvNextModel.from_pretrained(tmp_path).eval()
    assert again.config.depths == tower.config.hf_config["depths"] and len(again.encoder.stages) == 5
    pixels = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected = again.encoder(again.embeddings(pixels), output_hidden_states=True).hidden_states[-1]
        assert torch.equal(tower(pixels).hidden_states[-1], expected.flatten(2).transpose(1, 2))


def test_only_a_convnext_grows_a_stage():
    tower, _ = build_tower("clip-vit-l14-336-tiny")
    with pytest.raises(ConfigError, match="only a ConvNeXt grows stages"):
        add_stage(tower, depth=1, width=8)


@pytest.mark.parametrize(("layer", "tokens", "width"), [(-1, 4, 48), (-2, 16, 32), (1, 1024, 8)])
def test_extract_gives_a_stages_features_as_a_token_map(tmp_path, layer, tokens, width, capsys):
    """`fovea extract` on ConvLLaVA's tower: one stage's map as (H*W, C), row-major, at 128 px."""
    from PIL import Image
    from safetensors import safe_open

    from fovea.cli import main

    Image.new("RGB", (300, 200), (200, 30, 30)).save(tmp_path / "a.png")
    out = tmp_path / "f.safetensors"
    argv = [
        "extract",
        str(tmp_path / "a.png"),
        "--tower",
        "convllava-convnext-768-tiny",
        "--random-weights",
        "--quiet",
    ]
    assert main([*argv, "--layer", str(layer), "--out", str(out)]) == 0
    with safe_open(out, "pt") as f:
        assert f.get_tensor(str(tmp_path / "a.png")).shape == (tokens, width)
