"""UNICOM's own ViT as a tower: parity with the original code on its released key layout, fovea's
tower contract, gradient checkpointing, save/load, a tiny VLM on it, and its errors.

The reference forward below is written with plain torch functional ops from the structure of
deepglint/unicom ``unicom/unicom/vision_transformer.py`` (``VisionTransformer.forward``), not by
calling fovea's module.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fovea.errors import CheckpointError, ConfigError
from fovea.tiny import tiny_vlm
from fovea.towers import TOWER_FAMILIES, TowerConfig, VisionTower, build_tower
from fovea.towers.base import _shortened

# 3 layers of width 32, a 3x3 grid of 8-px patches, a 16-d embedding.
HF = {
    "model_type": "unicom_vision_model",
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "patch_size": 8,
    "image_size": 24,
    "embedding_size": 16,
}


def _tower(**changes) -> VisionTower:
    attn = changes.pop("attn_implementation", "sdpa")
    return VisionTower(TowerConfig(hf_config={**HF, **changes}, attn_implementation=attn))


def _original_state(width=32, layers=3, patch=8, grid=3, embedding=16, seed=0) -> dict[str, torch.Tensor]:
    """A random state dict in the original ``VisionTransformer``'s layout, rounded to fp16 as the
    released ``FP16-ViT-*.pt`` files are."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).half()

    n, mlp = grid * grid, 4 * width
    state = {
        "patch_embed.proj.weight": rand(width, 3, patch, patch),
        "patch_embed.proj.bias": rand(width),
        "pos_embed": rand(1, n, width),
        "norm.weight": rand(width, shift=1.0),
        "norm.bias": rand(width),
        "feature.0.weight": rand(width, n * width, scale=0.005),
        "feature.2.weight": rand(embedding, width),
    }
    for i in range(layers):
        p = f"blocks.{i}."
        state.update(
            {
                p + "norm1.weight": rand(width, shift=1.0),
                p + "norm1.bias": rand(width),
                p + "attn.qkv.weight": rand(3 * width, width),
                p + "attn.proj.weight": rand(width, width),
                p + "attn.proj.bias": rand(width),
                p + "norm2.weight": rand(width, shift=1.0),
                p + "norm2.bias": rand(width),
                p + "mlp.fc1.weight": rand(mlp, width, scale=1.0),  # large enough for ReLU6 to clip
                p + "mlp.fc1.bias": rand(mlp),
                p + "mlp.fc2.weight": rand(width, mlp, scale=0.05),
                p + "mlp.fc2.bias": rand(width),
            }
        )
    for k, dim, var in ((1, width, 0.01), (3, embedding, 1.0)):  # feature.1: small enough that eps shows
        p = f"feature.{k}."
        state.update(
            {
                p + "weight": rand(dim, shift=1.0),
                p + "bias": rand(dim),
                p + "running_mean": rand(dim, scale=0.02),
                p + "running_var": ((torch.rand(dim, generator=g) + 0.2) * var).half(),
                p + "num_batches_tracked": torch.tensor(1000),
            }
        )
    return state


def _original_forward(state, pixels, heads=4, patch=8):
    """(normed tokens (B, N, D), pre-norm last block (B, N, D), embedding (B, E)), eval mode."""
    s = {k: v.float() for k, v in state.items()}
    x = F.conv2d(pixels, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=patch)
    x = x.flatten(2).transpose(1, 2) + s["pos_embed"]  # PatchEmbedding, then + pos_embed
    b, n, d = x.shape
    i = 0
    while f"blocks.{i}.norm1.weight" in s:
        p = f"blocks.{i}."
        h = F.layer_norm(x, (d,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps=1e-5)
        qkv = F.linear(h, s[p + "attn.qkv.weight"]).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax(q @ k.transpose(-2, -1) * (d // heads) ** -0.5, dim=-1) @ v  # (B, H, N, Dh)
        a = a.permute(2, 0, 1, 3).contiguous().view(n, b, -1).permute(1, 0, 2)  # the original's path
        x = x + F.linear(a, s[p + "attn.proj.weight"], s[p + "attn.proj.bias"])
        h = F.layer_norm(x, (d,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps=1e-5)
        h = F.relu6(F.linear(h, s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"])
        i += 1
    normed = F.layer_norm(x, (d,), s["norm.weight"], s["norm.bias"], eps=1e-5)
    e = torch.reshape(normed, (b, n * d))
    for lin, bn in (("feature.0.", "feature.1."), ("feature.2.", "feature.3.")):
        e = F.linear(e, s[lin + "weight"])
        stats = (s[bn + "running_mean"], s[bn + "running_var"], s[bn + "weight"], s[bn + "bias"])
        e = F.batch_norm(e, *stats, training=False, eps=2e-5)
    return normed, x, e


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("prefix", ["", "_orig_mod.module."])
def test_released_layout_matches_the_original_forward(tmp_path, attn, prefix):
    state = _original_state()
    path = tmp_path / "FP16-ViT-tiny.pt"
    torch.save({prefix + k: v for k, v in state.items()}, path)
    tower = _tower(attn_implementation=attn, drop_path_rate=0.1).eval()  # drop path: training only
    tower.load_weights(path)
    assert tower.model.embeddings.position_embedding.dtype == torch.float32
    assert torch.equal(tower.model.embeddings.position_embedding, state["pos_embed"].float())
    pixels = torch.randn(3, 3, 24, 24)
    normed, last_block, embedding = _original_forward(state, pixels)
    with torch.no_grad():
        out = tower.model(pixels, output_hidden_states=True)
    assert (out.last_hidden_state - normed).abs().max() < 1e-5
    assert (out.hidden_states[-1] - last_block).abs().max() < 1e-5
    assert (out.pooler_output - embedding).abs().max() < 1e-5


def test_legacy_torch_format_loads(tmp_path):
    state = _original_state()
    path = tmp_path / "old.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    tower = _tower()
    tower.load_weights(path)
    assert torch.equal(tower.model.head.fc1.weight, state["feature.0.weight"].float())


def test_tower_contract_and_shortened_runs():
    tower = _tower().eval()
    pixels = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        out = tower(pixels)
        short = tower(pixels, depth=1)
        with _shortened(tower.model, "encoder.layers", 2):
            cut = tower.model(pixels)
    assert len(out.hidden_states) == 3 + 1 and out.num_prefix_tokens == 0 and out.grid == (3, 3)
    assert all(h.shape == (2, 9, 32) for h in out.hidden_states)
    assert len(short.hidden_states) == 2 and all(map(torch.equal, short.hidden_states, out.hidden_states))
    assert cut.pooler_output is None  # the head reads the last block only
    assert tower.model.config.num_hidden_layers == len(tower.model.encoder.layers) == 3
    assert TOWER_FAMILIES.get("unicom_vision_model").pooled_is_embedding  # pretraining adds no head
    model = tower.model  # the original's norms: nn.LayerNorm defaults, BatchNorm1d(eps=2e-5)
    assert model.post_layernorm.eps == model.encoder.layers[0].layer_norm1.eps == 1e-5
    assert model.head.bn1.eps == model.head.bn2.eps == 2e-5


def test_gradient_checkpointing_gives_the_same_gradients():
    tower = _tower(drop_path_rate=0.2).train()  # train mode: drop path and batch statistics
    pixels = torch.randn(4, 3, 24, 24)

    def gradients():
        torch.manual_seed(1)
        tower.zero_grad()
        out = tower.model(pixels, output_hidden_states=True)
        (out.pooler_output.square().sum() + out.hidden_states[2].sum()).backward()
        return {n: p.grad.clone() for n, p in tower.named_parameters()}

    plain = gradients()
    model = tower.model
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.encoder.layers)
    checkpointed = gradients()
    for name, grad in plain.items():
        assert torch.allclose(grad, checkpointed[name], atol=1e-6), name


def test_saved_directory_builds_bit_exact(tmp_path):
    tower = _tower().eval()
    tower.model.head.bn1.running_var.uniform_(0.5, 2.0)  # buffers travel too
    tower.model.save_pretrained(tmp_path)
    loaded, image = build_tower(str(tmp_path), pretrained=True)
    loaded.eval()
    pixels = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        want, got = tower.model(pixels), loaded.model(pixels)
    assert torch.equal(want.pooler_output, got.pooler_output)
    assert torch.equal(want.last_hidden_state, got.last_hidden_state)
    assert type(loaded.model) is type(tower.model) and image["size"] == 24
    assert image["resample"] == "bicubic" and image["resize"] == "shortest_edge_crop"


def test_tiny_vlm_on_a_unicom_tower():
    model = tiny_vlm("unicom-vit-b32-tiny")
    image = Image.fromarray((np.random.default_rng(0).random((50, 90, 3)) * 255).astype("uint8"))
    inputs = model.prepare("<image>\nWhat is it?", images=[image])
    placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert model.token_grid() == (2, 2)  # 64 px at patch 32, no CLS
    assert placeholders == model.num_image_tokens(inputs["image_layouts"][0])
    with torch.no_grad():
        packed = model.encode_images(inputs.images)
        logits = model(**inputs).logits
    assert packed[0].shape[0] == placeholders
    assert logits.shape[1] == inputs["input_ids"].shape[1]


def test_wrong_image_size_and_train_batch_of_one_are_clear():
    tower = _tower()
    with pytest.raises(ValueError, match="takes 24x24 pixels, got 32x32"):
        tower(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 2 images, got 1; call .eval()"):
        tower.model(pixel_values=torch.randn(1, 3, 24, 24))  # the embedding head, in train mode
    assert tower.eval()(torch.randn(1, 3, 24, 24)).hidden_states[-1].shape == (1, 9, 32)


def test_as_a_vlm_tower_the_embedding_head_does_not_run():
    """A LLaVA-style model reads hidden states: in train mode one view works, and the head's
    BatchNorm statistics do not move (it would otherwise drift in a frozen tower)."""
    tower = _tower().train()
    before = {k: v.clone() for k, v in tower.model.head.state_dict().items()}
    out = tower(torch.randn(1, 3, 24, 24))
    assert len(out.hidden_states) == tower.num_layers + 1
    after = tower.model.head.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def _drop(state, key):
    return {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize(
    "state, message",
    [
        (
            _original_state(grid=2),
            r"\(1, 4, 32\) \(2x2 patches\) do not fit this tower's \(1, 9, 32\) \(3x3 ",
        ),
        (
            _drop(_original_state(), "feature.3.bias"),
            "does not fit the unicom_vision_model tower .missing 'head.bn2.bias'",
        ),
        ({**_original_state(), "cls_token": torch.zeros(1, 1, 32)}, "unexpected key 'cls_token'"),
    ],
    ids=["other-grid", "missing", "unexpected"],
)
def test_weights_that_do_not_fit_are_one_line(tmp_path, state, message):
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=message) as err:
        _tower().load_weights(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_presets_and_config_errors():
    with pytest.raises(
        ConfigError, match=r"weights are a file \(https://github.com/deepglint/unicom/releases"
    ):
        build_tower("unicom-vit-b32", pretrained=True)
    with pytest.raises(ConfigError, match="multiple of num_attention_heads"):
        _tower(hidden_size=30)
