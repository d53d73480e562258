"""MMFuser (connectors/mmfuser.py) against an independent forward written here from the original
``MSCrossAttnBlock`` (yuecao0119/MMFuser): identity at init, the same outputs with random weights on
square, non-square and mixed-grid levels, the original's state-dict names and size, bf16, gradients
and one-line config errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fovea
from fovea.config import from_dict
from fovea.connectors.connector import ConnectorConfig
from fovea.connectors.fusers import FuserInput, build_fuser, fuser_config
from fovea.connectors.mmfuser import MMFuser, MMFuserConfig
from fovea.errors import ConfigError
from fovea.tiny import tiny_vlm

from mmfuser_reference import reference

# The original's state dict (MSCrossAttnBlock: gammas, then the children in registration order).
_ATTENTION = ["sampling_offsets", "attention_weights", "value_proj", "output_proj"]
ORIGINAL_KEYS = (
    ["gamma1", "gamma2"]
    + [f"cross_attn.{m}.{p}" for m in _ATTENTION for p in ("weight", "bias")]
    + [f"{n}.{p}" for n in ("query_norm", "feat_norm", "norm1") for p in ("weight", "bias")]
    + [f"self_attn.{m}.{p}" for m in _ATTENTION for p in ("weight", "bias")]
)


def _fuser(width: int, layers: int, **settings) -> MMFuser:
    return build_fuser({"type": "mmfuser", **settings}, [width] * layers)


def _randomise(fuser: MMFuser, seed: int = 0) -> MMFuser:
    """Every parameter off its init: non-zero gammas, offsets of a few pixels (some off the map),
    non-uniform attention weights, non-trivial LayerNorms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in fuser.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("sampling_offsets.weight"):
                p.copy_(noise * 0.5)  # offsets ~ 0.5 * sqrt(D) pixels around the star init
            elif name.endswith("sampling_offsets.bias"):
                p.add_(noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.startswith("gamma") or "norm" in name or name.endswith("bias"):
                p.copy_(noise * 0.5)
            else:
                p.copy_(noise / p.shape[-1] ** 0.5)
    return fuser


CASES = {
    "square, 4 levels, 16 heads": ([(4, 4)] * 5, 64, 16, 4),
    "non-square 3x5": ([(3, 5)] * 3, 32, 4, 3),
    "levels of other grids": ([(6, 10), (2, 3), (5, 4), (3, 5)], 32, 8, 2),
    "one level": ([(3, 5), (3, 5)], 32, 2, 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_an_independent_reference_forward(case):
    grids, width, heads, points = CASES[case]
    fuser = _randomise(_fuser(width, len(grids), heads=heads, points=points)).eval()
    torch.manual_seed(1)
    layers = [torch.randn(2, h * w, width) for h, w in grids]
    with torch.no_grad():
        out = fuser(FuserInput(layers=layers, grids=grids))
        expected = reference(fuser.state_dict(), layers, grids, heads, points, 1e-6)
    assert out.shape == (2, grids[-1][0] * grids[-1][1], width)
    assert fuser.out_grid(grids) == grids[-1] and fuser.out_width() == width
    assert (out - layers[-1]).abs().mean() > 0.1  # the fused part is not negligible
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_is_the_identity_at_init_and_starts_as_the_original():
    fuser = _fuser(32, 5).eval()
    layers = [torch.randn(3, 15, 32) for _ in range(5)]
    assert torch.equal(fuser(FuserInput(layers=layers, grids=[(3, 5)] * 5)), layers[-1])
    assert torch.count_nonzero(fuser.gamma1) == 0 and torch.count_nonzero(fuser.gamma2) == 0
    for attention in (fuser.cross_attn, fuser.self_attn):
        assert torch.count_nonzero(attention.sampling_offsets.weight) == 0
        assert torch.count_nonzero(attention.attention_weights.weight) == 0
        assert torch.count_nonzero(attention.attention_weights.bias) == 0
        assert torch.count_nonzero(attention.value_proj.bias) == 0
    # the star: flat index ((m*L + l)*P + k)*2 + c = (k + 1) * d_m[c], d_m on the unit square's border
    bias = fuser.cross_attn.sampling_offsets.bias.view(16, 4, 4, 2)
    assert torch.equal(bias[0, 2], torch.tensor([[1.0, 0], [2, 0], [3, 0], [4, 0]]))
    torch.testing.assert_close(bias[2, 1, 0], torch.tensor([1.0, 1.0]))  # 45 degrees: (1, 1)
    torch.testing.assert_close(bias[4, 3, 3], torch.tensor([0.0, 4.0]))  # 90 degrees, 4th point


def test_a_model_with_mmfuser_equals_the_plain_projector_at_step_zero():
    plain = tiny_vlm()
    config = plain.config
    config.connector = from_dict(ConnectorConfig, {"layers": [-2]})
    plain = fovea.VisionLanguageModel(config, plain.tokenizer).eval()
    fused_config = plain.config
    fused_config.connector = from_dict(
        ConnectorConfig, {"layers": [0, 1, 0, 1, -2], "fuser": {"type": "mmfuser"}}
    )
    fused = fovea.VisionLanguageModel(fused_config, plain.tokenizer).eval()
    missing, unexpected = fused.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("connector.fuser.") for k in missing)
    pixels = (torch.rand(40, 60, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    prompt, images = "<image>\nWhat is it?", [Image.fromarray(pixels.numpy())]
    with torch.no_grad():
        assert torch.equal(
            fused(**fused.prepare(prompt, images=images)).logits,
            plain(**plain.prepare(prompt, images=images)).logits,
        )


def test_state_dict_names_and_size_are_the_originals():
    fuser = _fuser(1024, 5)
    assert list(fuser.state_dict()) == ORIGINAL_KEYS
    assert sum(p.numel() for p in fuser.parameters()) == 5_190_592
    shapes = {k: tuple(v.shape) for k, v in fuser.state_dict().items()}
    assert shapes["cross_attn.sampling_offsets.weight"] == (512, 1024)  # 16 heads * 4 levels * 4 points * 2
    assert shapes["cross_attn.attention_weights.weight"] == (256, 1024)
    assert shapes["self_attn.sampling_offsets.weight"] == (128, 1024)
    assert shapes["self_attn.attention_weights.weight"] == (64, 1024)
    assert fuser.query_norm.eps == 1e-6


# bf16 against fp32 on the same weights, max |diff| / max |fp32 output|, measured over 5 seeds:
# 5e-3 to 1.7e-2 here (D=32, offsets of ~3 px); at D=1024, 24x24, offsets of ~1.6 px, 9e-3 (mean
# 3e-3). The offsets come out of a bf16 Linear, as in the original, so offsets of many pixels lose
# more (16 px: 0.14 max, 1e-2 mean). Bound here: 3e-2.
BF16_TOLERANCE = 3e-2


@pytest.mark.parametrize("batch", [1, 3])
def test_bf16_runs_close_to_fp32_with_an_fp32_sampling_core(batch, monkeypatch):
    grids = [(6, 10), (3, 5), (3, 5)]
    fuser = _randomise(_fuser(32, 3, heads=4)).eval()
    torch.manual_seed(2)
    layers = [torch.randn(batch, h * w, 32) for h, w in grids]
    with torch.no_grad():
        expected = fuser(FuserInput(layers=layers, grids=grids))
        seen = []
        sample = F.grid_sample

        def recording(value, grid, **kwargs):
            seen.append((value.dtype, grid.dtype))
            return sample(value, grid, **kwargs)

        monkeypatch.setattr(torch.nn.functional, "grid_sample", recording)
        out = fuser.to(torch.bfloat16)(FuserInput(layers=[t.bfloat16() for t in layers], grids=grids))
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    assert seen and set(seen) == {(torch.float32, torch.float32)}  # the core ran in fp32
    error = ((out.float() - expected).abs().max() / expected.abs().max()).item()
    assert error < BF16_TOLERANCE, error


def _gradients(fuser: MMFuser, grids) -> tuple[set[str], list[torch.Tensor]]:
    """Names of the parameters a loss reaches, and the input layers' gradients."""
    fuser.zero_grad()
    layers = [torch.randn(2, h * w, 32, requires_grad=True) for h, w in grids]
    fuser(FuserInput(layers=layers, grids=grids)).pow(2).mean().backward()
    reached = {n for n, p in fuser.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    return reached, [t.grad for t in layers]


def test_gradients_reach_every_parameter_once_the_gammas_are_non_zero():
    grids = [(4, 4), (2, 3), (3, 5)]
    fuser = _fuser(32, 3, heads=4)
    every = {n for n, _ in fuser.named_parameters()}
    reached, _ = _gradients(fuser, grids)
    assert reached == {"gamma1"}  # at init only gamma1 learns (LayerScale): the rest is gated by it
    with torch.no_grad():
        fuser.gamma1.fill_(0.5)
        fuser.gamma2.fill_(0.5)
    reached, _ = _gradients(fuser, grids)
    # the query enters only through the offset and attention-weight Linears, zero at init: its
    # LayerNorm learns once they have moved (one step later)
    assert reached == every - {"query_norm.weight", "query_norm.bias"}
    with torch.no_grad():
        for attention in (fuser.cross_attn, fuser.self_attn):
            attention.sampling_offsets.weight.normal_(0, 0.1)
            attention.attention_weights.weight.normal_(0, 0.1)
    reached, inputs = _gradients(fuser, grids)
    assert reached == every
    assert all(g.abs().sum() > 0 for g in inputs)  # every level is read


@pytest.mark.parametrize(
    "settings, widths, message",
    [
        ({}, [32], "needs at least 2 selected layers"),
        ({}, [32, 32, 48], "must have one width, got \\[32, 32, 48\\]"),
        ({"heads": 5}, [32, 32], "width 32 is not divisible by heads=5"),
        ({"points": 0}, [32, 32], "heads and points must be >= 1"),
    ],
)
def test_a_bad_config_is_one_line(settings, widths, message):
    with pytest.raises(ConfigError, match=message) as err:
        build_fuser({"type": "mmfuser", **settings}, widths)
    assert "\n" not in str(err.value)


def test_an_unknown_key_is_one_line_naming_it():
    with pytest.raises(ConfigError, match="unknown config key 'fuser.head' \\(did you mean 'heads'\\?\\)"):
        fuser_config({"type": "mmfuser", "head": 8})
    config = fuser_config({"type": "mmfuser", "heads": 8, "points": 2})
    assert config == MMFuserConfig(heads=8, points=2)


def test_a_token_count_off_its_grid_is_an_error():
    fuser = _fuser(32, 2, heads=4)
    layers = [torch.randn(1, 16, 32), torch.randn(1, 17, 32)]  # e.g. a kept CLS token
    with pytest.raises(ValueError, match="a 4x4 grid has 16 tokens, got 17"):
        fuser(FuserInput(layers=layers, grids=[(4, 4), (4, 4)]))
