"""MMFuser's own checkpoints (LLaVA-1.5 layout, yuecao0119/MMFuser): fovea.load equals the original.

A random tiny checkpoint is written in MMFuser's layout (``model.mm_projector.0.*`` = the fuser
block, ``.1`` / ``.3`` = the MLP, ``mm_vision_select_layer`` a list or ``"list-..."`` string,
``image_aspect_ratio: pad``). The reference is the original model's forward written out here from
its code, independently of fovea: CLIP hidden states at the listed indices with CLS dropped,
``MSCrossAttnBlock`` step by step with ``F.grid_sample``, Linear-GELU-Linear, then the LM on the
merged embeddings. Gammas are non-zero and offsets/attention weights perturbed, so the fuser is
not the identity it is at initialisation.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, AutoModel, LlamaConfig, LlamaForCausalLM
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

import fovea
from fovea.errors import CheckpointError
from fovea.imaging.processor import CLIP_MEAN
from fovea.tiny import tiny_tokenizer

from llava15_reference import config_fields, expand_to_square, greedy, lm_state
from llava_layouts import save_sharded
from mmfuser_reference import reference
from released_lm import assert_fields_reach, released_lm_fields

SELECT = [-22, -17, -12, -7, -2]
HEADS, POINTS, LEVELS, EPS = 16, 4, 4, 1e-6
D = 32  # tower width (head width 2 with 16 heads)
VISION = {
    "model_type": "clip_vision_model",
    "hidden_act": "quick_gelu",
    "hidden_size": D,
    "intermediate_size": 64,
    "num_hidden_layers": 24,  # 25 hidden states: -22/-17/-12/-7/-2 = 3/8/13/18/23
    "num_attention_heads": 2,
    "image_size": 56,
    "patch_size": 14,
}


def _star(levels: int) -> torch.Tensor:
    """MSDeformAttn's initial sampling_offsets bias, flat ((m*L + l)*P + k)*2 + c."""
    bias = torch.zeros(HEADS, levels, POINTS, 2)
    for m in range(HEADS):
        t = 2 * math.pi * m / HEADS
        d = torch.tensor([math.cos(t), math.sin(t)])
        d = d / d.abs().max()
        for k in range(POINTS):
            bias[m, :, k] = (k + 1) * d
    return bias.flatten()


def _fuser_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    state = {"gamma1": rnd(D, scale=0.5) + 0.5, "gamma2": rnd(D, scale=0.5) + 0.5}
    for name, levels in (("cross_attn", LEVELS), ("self_attn", 1)):
        sampling = HEADS * levels * POINTS
        state |= {
            f"{name}.sampling_offsets.weight": rnd(sampling * 2, D, scale=0.1),
            f"{name}.sampling_offsets.bias": _star(levels) + rnd(sampling * 2, scale=0.3),
            f"{name}.attention_weights.weight": rnd(sampling, D, scale=0.3),
            f"{name}.attention_weights.bias": rnd(sampling, scale=0.3),
        }
        for proj in ("value_proj", "output_proj"):
            state |= {f"{name}.{proj}.weight": rnd(D, D, scale=0.3), f"{name}.{proj}.bias": rnd(D)}
    for norm in ("query_norm", "feat_norm", "norm1"):
        state |= {f"{norm}.weight": 1 + rnd(D), f"{norm}.bias": rnd(D)}
    return state


class Original:
    """The original MMFuser LLaVA-1.5 model's forward on given weights (written from its code)."""

    def __init__(self, tmp_path):
        gen = torch.Generator().manual_seed(0)
        self.tokenizer = tiny_tokenizer(image_token=False)
        self.tower = AutoModel.from_config(AutoConfig.for_model(**VISION)).eval()
        self.lm = LlamaForCausalLM(LlamaConfig(**released_lm_fields(len(self.tokenizer), "llama"))).eval()
        with torch.no_grad():
            for p in list(self.tower.parameters()) + list(self.lm.parameters()):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        self.fuser = _fuser_state(gen)
        width = self.lm.config.hidden_size
        self.mlp = {
            "1.weight": torch.randn(width, D, generator=gen) * 0.2,
            "1.bias": torch.randn(width, generator=gen) * 0.2,
            "3.weight": torch.randn(width, width, generator=gen) * 0.2,
            "3.bias": torch.randn(width, generator=gen) * 0.2,
        }
        self.tower.save_pretrained(tmp_path / "tower")
        CLIPImageProcessorPil(
            size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
        ).save_pretrained(tmp_path / "tower")
        self.image_processor = CLIPImageProcessorPil.from_pretrained(tmp_path / "tower")
        self.tower_dir = tmp_path / "tower"

    def write(self, directory, select_layer, fuser: dict | None = None):
        """The checkpoint as MMFuser's save_pretrained writes it."""
        directory.mkdir(parents=True, exist_ok=True)
        raw = config_fields(
            self.lm, mm_vision_tower=str(self.tower_dir), mm_hidden_size=D, mm_vision_select_layer=select_layer,
            mm_patch_merge_type="flat",
        )  # fmt: skip
        (directory / "config.json").write_text(json.dumps(raw, indent=2))
        state = lm_state(self.lm)
        for k, v in self.tower.state_dict().items():
            state[f"model.vision_tower.vision_tower.{k}"] = v
        for k, v in (fuser or self.fuser).items():
            state[f"model.mm_projector.0.{k}"] = v
        for k, v in self.mlp.items():
            state[f"model.mm_projector.{k}"] = v
        save_sharded({k: v.detach().clone() for k, v in state.items()}, directory)
        self.tokenizer.save_pretrained(directory)
        return directory

    # -- the original's forward -------------------------------------------------------------
    def pixels(self, image: Image.Image) -> torch.Tensor:
        """LLaVA-1.5 ``pad``: expand2square with the mean colour, then the CLIP processor."""
        canvas = expand_to_square(image, CLIP_MEAN)
        return self.image_processor(images=[canvas], return_tensors="pt")["pixel_values"]

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(pixel_values=pixels, output_hidden_states=True).hidden_states
        srcs = [hidden[ix][:, 1:] for ix in SELECT]  # 'patch': CLS dropped
        e = int(math.sqrt(srcs[0].shape[1]))  # the original assumes a square grid
        fused = reference(self.fuser, srcs, [(e, e)] * len(srcs), HEADS, POINTS, EPS)
        m = self.mlp
        return F.linear(F.gelu(F.linear(fused, m["1.weight"], m["1.bias"])), m["3.weight"], m["3.bias"])

    def input_ids(self, text: str) -> list[int]:
        """tokenizer_image_token: the chunks between ``<image>`` tags, joined by -200."""
        chunks = [self.tokenizer(c).input_ids for c in text.split("<image>")]
        ids = chunks[0]
        for chunk in chunks[1:]:
            ids = ids + [-200] + chunk
        return ids

    def embeds(self, ids: list[int], features: torch.Tensor) -> torch.Tensor:
        embed = self.lm.get_input_embeddings()
        parts, images = [], iter(features)
        for piece, is_image in _runs(ids):
            parts.append(next(images) if is_image else embed(torch.tensor(piece)))
        return torch.cat(parts)[None]

    def answer(self, text: str, image: Image.Image, steps: int = 10) -> tuple[torch.Tensor, str]:
        """(last-position logits, greedy text) of the original on a one-image prompt."""
        with torch.no_grad():
            embeds = self.embeds(self.input_ids(text), self.image_features(self.pixels(image)))
        return greedy(self.lm, self.tokenizer, embeds, steps)


def _runs(ids: list[int]):
    """Text runs and image placeholders, in order."""
    run: list[int] = []
    for i in ids:
        if i == -200:
            if run:
                yield run, False
            yield None, True
            run = []
        else:
            run.append(i)
    if run:
        yield run, False


def _images():
    rng = np.random.default_rng(7)
    return [
        Image.fromarray((rng.random(s + (3,)) * 255).astype("uint8")) for s in [(40, 150), (130, 45), (5, 9)]
    ]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return Original(tmp_path_factory.mktemp("mmfuser"))


@pytest.mark.parametrize("select", [SELECT, "list-22/-17/-12/-7/-2"], ids=["list", "string"])
def test_mmfuser_checkpoint_matches_the_original(tmp_path, original, select):
    ours = fovea.load(original.write(tmp_path / "ck", select))
    assert ours.config.connector.layers == SELECT
    assert_fields_reach(ours.lm.config, released_lm_fields(len(original.tokenizer), "llama"))
    assert ours.config.connector.fuser["type"] == "mmfuser"
    assert ours.config.image.mode == "pad" and ours.config.merge == "flat"
    text = "<image>\nWhat is in the picture?"
    for image in _images():
        inputs = ours.prepare(text, images=[image])
        ids = inputs["input_ids"][0].tolist()  # fovea expands the placeholder to one id per token
        assert ids.count(-200) == 16
        assert [i for n, i in enumerate(ids) if i != -200 or ids[n - 1] != -200] == original.input_ids(text)
        assert (inputs["pixel_values"][0] - original.pixels(image)[0]).abs().max() < 1e-5
        expected, answer = original.answer(text, image)
        with torch.no_grad():
            got = ours(**inputs).logits[0, -1]
        assert (got - expected).abs().max().item() < 1e-4
        assert ours.generate(text, images=[image], template=None, max_new_tokens=10) == answer


def test_config_that_disagrees_with_the_fuser_weights_is_one_error(tmp_path, original):
    ck = original.write(tmp_path / "few", [-2])
    with pytest.raises(CheckpointError, match=r"mm_vision_select_layer \[-2\] selects 1 layer"):
        fovea.load(ck)
    narrow = {k: v[..., :16] if k == "gamma1" else v for k, v in original.fuser.items()}
    ck = original.write(tmp_path / "narrow", SELECT, fuser=narrow)
    with pytest.raises(CheckpointError, match=r"mm_projector\.0\.gamma1 has width 16.*hidden size is 32"):
        fovea.load(ck)
    ck = original.write(tmp_path / "bad", "list-2/x")
    with pytest.raises(CheckpointError, match="mm_vision_select_layer 'list-2/x'"):
        fovea.load(ck)
