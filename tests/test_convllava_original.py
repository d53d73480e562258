"""ConvLLaVA's released layout (alibaba/conv-llava; ConvLLaVA-sft/pretrain-*): fovea.load equals the original.

A random tiny five-stage ConvNeXt is written as ``mm_vision_tower`` the way ConvLLaVA's train.py
writes ``vision_tower/`` (transformers names, the pooled ``layernorm.*`` left out, a CLIP image
processor), and a random checkpoint beside it: ``model_type: llava`` with ``LlavaLlamaForCausalLM``
(the released configs), ``mm_hidden_size`` = the fifth stage's width, ``image_aspect_ratio: pad``,
and tower copies with *other* weights. The reference is the original's forward written out here:
expand2square with int(255 * mean), the processor, the stem and stages of transformers' own
``ConvNextModel`` (last stage's raw output, flattened row-major), Linear-GELU-Linear, then the LM.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from transformers import ConvNextConfig, ConvNextModel, LlamaConfig, LlamaForCausalLM
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

import fovea
from fovea.tiny import tiny_tokenizer

from llava15_reference import config_fields, greedy, lm_state, one_image_embeds, pad_pixels, write_checkpoint
from released_lm import assert_fields_reach, released_lm_fields

SIZE = 128  # 2 x 2 tokens at stride 64
TOWER = {"depths": [1, 1, 1, 1, 2], "hidden_sizes": [8, 16, 24, 32, 48], "num_stages": 5, "patch_size": 4,
         "image_size": SIZE, "layer_scale_init_value": 1e-6, "layer_norm_eps": 1e-12}  # fmt: skip
TEXT = "<image>\nWhat is in the picture?"


class Original:
    def __init__(self, root, select: int, repo_weights: bool):
        gen = torch.Generator().manual_seed(4)
        self.select, self.tower_dir = select, root / "tower"
        self.vision = ConvNextModel(ConvNextConfig(**TOWER)).eval()
        _randomise(self.vision, gen, 0.3)
        self.tower_dir.mkdir()
        self.vision.config.save_pretrained(self.tower_dir)
        state = {
            k: v.contiguous() for k, v in self.vision.state_dict().items() if not k.startswith("layernorm.")
        }
        if repo_weights:
            save_file(state, self.tower_dir / "model.safetensors")
        self.processor = CLIPImageProcessorPil(
            size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}
        )
        self.processor.save_pretrained(self.tower_dir)
        # the checkpoint's own tower copy: the repo's weights when the repo has none, else others
        self.copies = (
            state if not repo_weights else {k: torch.randn(v.shape, generator=gen) for k, v in state.items()}
        )
        if select == -2:
            self.vision.encoder.stages[-1].layers = self.vision.encoder.stages[-1].layers[:-1]
        self.tokenizer = tiny_tokenizer(image_token=False)
        self.lm = LlamaForCausalLM(LlamaConfig(**released_lm_fields(len(self.tokenizer), "llama"))).eval()
        _randomise(self.lm, gen, 0.2)
        width = self.lm.config.hidden_size
        self.mlp = {"0.weight": torch.randn(width, 48, generator=gen) * 0.2, "0.bias": torch.randn(width, generator=gen) * 0.2,
                    "2.weight": torch.randn(width, width, generator=gen) * 0.2, "2.bias": torch.randn(width, generator=gen) * 0.2}  # fmt: skip

    def write(self, directory):
        raw = config_fields(
            self.lm, model_type="llava", mm_vision_tower=str(self.tower_dir), mm_hidden_size=48,
            mm_vision_select_layer=self.select, tune_vision_tower=True,
        )  # fmt: skip
        state = lm_state(self.lm) | {f"model.mm_projector.{k}": v for k, v in self.mlp.items()}
        state |= {f"model.vision_tower.vision_tower.{k}": v for k, v in self.copies.items()}
        return write_checkpoint(directory, raw, state, self.tokenizer)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        return pad_pixels(self.processor, image)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        maps = self.vision.encoder(self.vision.embeddings(pixels), output_hidden_states=True).hidden_states[
            -1
        ]
        tokens = maps.permute(0, 2, 3, 1).reshape(maps.shape[0], -1, maps.shape[1])  # row-major (B, H*W, C)
        m = self.mlp
        return F.linear(F.gelu(F.linear(tokens, m["0.weight"], m["0.bias"])), m["2.weight"], m["2.bias"])[0]

    def answer(self, text: str, image: Image.Image, steps: int = 8) -> tuple[torch.Tensor, str]:
        with torch.no_grad():
            embeds = one_image_embeds(self.lm, self.tokenizer, text, self.features(self.pixels(image)))
        return greedy(self.lm, self.tokenizer, embeds, steps)


def _randomise(module, gen, scale) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def _images():
    rng = np.random.default_rng(8)
    return [
        Image.fromarray((rng.random(s + (3,)) * 255).astype("uint8")) for s in [(60, 200), (190, 50), (7, 5)]
    ]


@pytest.mark.parametrize(
    ("select", "repo_weights"),
    [(-1, True), (-1, False), (-2, True)],
    ids=["repo-weights", "checkpoint-weights", "select-2"],
)
def test_convllava_checkpoint_matches_the_original(tmp_path, select, repo_weights):
    original = Original(tmp_path, select, repo_weights)
    ours = fovea.load(original.write(tmp_path / "ck"))
    assert ours.config.tower.model_type == "convnext" and ours.config.image.mode == "pad"
    assert_fields_reach(ours.lm.config, released_lm_fields(len(original.tokenizer), "llama"))
    for image in _images():
        inputs = ours.prepare(TEXT, images=[image])
        assert inputs["input_ids"][0].tolist().count(-200) == (SIZE // 64) ** 2
        assert (inputs["pixel_values"][0] - original.pixels(image)[0]).abs().max() < 1e-5
        expected, answer = original.answer(TEXT, image)
        with torch.no_grad():
            got = ours(**inputs).logits[0, -1]
        assert (got - expected).abs().max().item() < 1e-4
        assert ours.generate(TEXT, images=[image], template=None, max_new_tokens=8) == answer
