"""MLCD towers in every published form give the same features.

Forms: a transformers MLCDVisionModel directory, its state dict in the older transformers
naming (``vision_model.*``), and DeepGlint's original RoPE2D state dict (fused ``in_proj``,
``class_pos_emb``, an absolute ``positional_embedding`` and ``proj`` the model never uses,
``_orig_mod.`` prefixes from torch.compile). The original file is written here from the
transformers weights following the published key layout.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, MLCDVisionConfig, MLCDVisionModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from fovea.cli import main
from fovea.errors import CheckpointError
from fovea.towers import build_tower

CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=56,
    patch_size=14,
    hidden_act="gelu",
)


def _original_state(model: MLCDVisionModel) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    out = {
        "conv1.weight": state["embeddings.patch_embedding.weight"],
        "class_embedding": state["embeddings.class_embedding"],
        "class_pos_emb": state["class_pos_emb"],
        "ln_pre.weight": state["pre_layrnorm.weight"],
        "ln_pre.bias": state["pre_layrnorm.bias"],
        "ln_post.weight": state["post_layernorm.weight"],
        "ln_post.bias": state["post_layernorm.bias"],
        "positional_embedding": torch.randn(17, 32),  # present in the release, unused by the model
        "proj": torch.randn(32, 16),
    }
    for i in range(3):
        hf, pt = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{pt}attn.in_proj.{kind}"] = torch.cat(
                [state[f"{hf}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            )
            out[f"{pt}attn.out_proj.{kind}"] = state[f"{hf}self_attn.out_proj.{kind}"]
            out[f"{pt}ln_1.{kind}"] = state[f"{hf}layer_norm1.{kind}"]
            out[f"{pt}ln_2.{kind}"] = state[f"{hf}layer_norm2.{kind}"]
            out[f"{pt}mlp.c_fc.{kind}"] = state[f"{hf}mlp.fc1.{kind}"]
            out[f"{pt}mlp.c_proj.{kind}"] = state[f"{hf}mlp.fc2.{kind}"]
    return {f"_orig_mod.{k}": v.clone() for k, v in out.items()}


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlcd")
    reference = MLCDVisionModel(MLCDVisionConfig(**CONFIG)).eval()
    reference.save_pretrained(root / "hf")
    CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}).save_pretrained(
        root / "hf"
    )
    old_names = {f"vision_model.{k}": v.clone() for k, v in reference.state_dict().items()}
    save_file(old_names, root / "old_names.safetensors")
    torch.save(_original_state(reference), root / "rope2d_original.pt")
    return reference, root


def test_every_form_gives_the_same_hidden_states(forms):
    reference, root = forms
    pixels = torch.randn(2, 3, 56, 84)  # non-square: RoPE2D row/col order matters
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True).hidden_states
        for weights in [None, root / "old_names.safetensors", root / "rope2d_original.pt"]:
            tower, _ = build_tower(str(root / "hf"), pretrained=weights is None, weights=weights)
            got = tower(pixels).hidden_states
            assert all(torch.equal(a, b) for a, b in zip(got, expected)), weights


def test_wrong_tower_file_is_one_line(forms, tmp_path):
    _, root = forms
    clip = CLIPVisionModel(CLIPVisionConfig(**{**CONFIG, "hidden_act": "quick_gelu"}))
    save_file(clip.state_dict(), tmp_path / "clip.safetensors")
    with pytest.raises(CheckpointError, match=r"clip.safetensors: does not fit the mlcd_vision_model tower"):
        build_tower(str(root / "hf"), weights=tmp_path / "clip.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable torch state dict"):
        build_tower(str(root / "hf"), weights=tmp_path / "junk.pt")


def test_extract_with_original_weights(forms, tmp_path, capsys):
    _, root = forms
    from PIL import Image

    Image.new("RGB", (90, 60), (10, 200, 30)).save(tmp_path / "a.png")
    out = tmp_path / "f.safetensors"
    args = [
        "extract",
        str(tmp_path / "a.png"),
        "--tower",
        str(root / "hf"),
        "--weights",
        str(root / "rope2d_original.pt"),
        "--pool",
        "cls",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    assert "wrote 1 feature tensors of shape 32" in capsys.readouterr().out
