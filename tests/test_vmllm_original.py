"""vMLLM's released layout (xmu-xiaoma666/vMLLM, LLaVA-1.5 ``llava_llama``): fovea.load equals the original.

For a SigLIP and a CLIP variant, a random tiny two-tower checkpoint is written as ``mm_vision_tower``
(vision + text halves, tokenizer, image processor) and a random vMLLM checkpoint beside it:
``model.mm_projector.{proj.0,proj.2,img_low_*,img_high_*,q/k/v_proj,txt_*}``, plus tower copies with
*other* weights, which the original ignores (it reloads the towers from ``mm_vision_tower``). The
reference is the original's ``encode_images`` (tests/vmllm_reference.py, independent of fovea) on
transformers' own towers, then the LM on the merged embeddings.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTextModel,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    SiglipConfig,
    SiglipModel,
    SiglipTextModel,
    SiglipVisionModel,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

import fovea
from fovea.checkpoints.export import convert
from fovea.errors import CheckpointError
from fovea.tiny import tiny_text_tower, tiny_tokenizer

from llava15_reference import config_fields, greedy, lm_state, one_image_embeds, pad_pixels, write_checkpoint
from released_lm import assert_fields_reach, released_lm_fields
from vmllm_reference import clip_text_vector, encode_images_clip, encode_images_siglip, siglip_text_vector

D, SIZE, PATCH, BLOCKS = 32, 32, 8, 4
VISION = {"hidden_size": D, "intermediate_size": 64, "num_hidden_layers": BLOCKS, "num_attention_heads": 2,
          "image_size": SIZE, "patch_size": PATCH}  # fmt: skip
VARIANTS = {"siglip": {"text_width": D}, "clip": {"text_width": 16, "projection_dim": 16}}
TEXT = "<image>\nWhat is in the picture?"


class Original:
    """A tiny vMLLM variant and the original model's forward on its weights."""

    def __init__(self, root, kind: str):
        self.kind, gen = kind, torch.Generator().manual_seed(1)
        text, self.text_tokenizer = tiny_text_tower(f"{kind}_text_model", width=VARIANTS[kind]["text_width"])
        text = {k: v for k, v in text.items() if k != "model_type"}
        if kind == "clip":
            two = CLIPModel(CLIPConfig(text_config=text, vision_config={**VISION, "hidden_act": "quick_gelu"},
                                       projection_dim=VARIANTS[kind]["projection_dim"]))  # fmt: skip
            processor = CLIPImageProcessorPil(
                size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}
            )
        else:
            two = SiglipModel(SiglipConfig(text_config=text, vision_config=VISION))
            processor = SiglipImageProcessorPil(size={"height": SIZE, "width": SIZE})
        _randomise(two, gen)
        self.tower_dir = root / "tower"
        two.save_pretrained(self.tower_dir)
        processor.save_pretrained(self.tower_dir)
        self.text_tokenizer.save_pretrained(self.tower_dir)
        self.tokenizer = tiny_tokenizer(image_token=False)
        self.lm = LlamaForCausalLM(LlamaConfig(**released_lm_fields(len(self.tokenizer), "llama"))).eval()
        _randomise(self.lm, gen)
        self.fused = VARIANTS[kind].get("projection_dim", D)
        self.block = _project_block(gen, D, self.fused, self.lm.config.hidden_size)
        self.copies = {f"model.vision_tower.vision_tower.{k}": torch.randn(v.shape, generator=gen)
                       for k, v in two.state_dict().items() if k.startswith("vision_model.")}  # fmt: skip
        self._load_towers()

    def _load_towers(self) -> None:
        """The towers as the original's load_model reads them from mm_vision_tower."""
        vision_cls, text_cls = (
            (CLIPVisionModel, CLIPTextModel) if self.kind == "clip" else (SiglipVisionModel, SiglipTextModel)
        )
        self.vision = vision_cls.from_pretrained(self.tower_dir).eval()
        if self.kind == "siglip":
            self.vision.encoder.layers = self.vision.encoder.layers[:-1]  # its last block is deleted
        self.text = text_cls.from_pretrained(self.tower_dir).eval()
        self.tower_tokenizer = AutoTokenizer.from_pretrained(self.tower_dir)
        self.weights = load_file(self.tower_dir / "model.safetensors")
        cls = CLIPImageProcessorPil if self.kind == "clip" else SiglipImageProcessorPil
        self.processor = cls.from_pretrained(self.tower_dir)

    def write(self, directory, block: dict | None = None):
        """The SFT checkpoint as the original's save_pretrained writes it."""
        raw = config_fields(
            self.lm, mm_vision_tower=str(self.tower_dir), mm_hidden_size=D, mm_vision_select_layer=-2,
            mm_patch_merge_type="flat", use_mm_proj=True, tune_mm_mlp_adapter=False,
        )  # fmt: skip
        state = lm_state(self.lm)
        state |= {f"model.mm_projector.{k}": v for k, v in (block or self.block).items()}
        state |= self.copies  # ignored by the original, and so by fovea
        return write_checkpoint(directory, raw, state, self.tokenizer)

    # -- the original's forward -----------------------------------------------------------------

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """``pad``: expand2square with int(255 * mean), then the tower's processor."""
        return pad_pixels(self.processor, image)

    def image_features(self, pixels: torch.Tensor, prompt: str) -> torch.Tensor:
        hidden = self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states
        if self.kind == "clip":
            text = clip_text_vector(
                self.text, self.tower_tokenizer, [prompt], self.weights["text_projection.weight"]
            )
            return encode_images_clip(self.block, hidden, self.weights["visual_projection.weight"], text)[0]
        return encode_images_siglip(
            self.block, hidden, siglip_text_vector(self.text, self.tower_tokenizer, [prompt])
        )[0]

    def answer(self, text: str, image: Image.Image, steps: int = 8) -> tuple[torch.Tensor, str]:
        """(last-position logits, greedy text); the prompt passed to encode_images is the human turn."""
        with torch.no_grad():
            embeds = one_image_embeds(
                self.lm, self.tokenizer, text, self.image_features(self.pixels(image), text)
            )
        return greedy(self.lm, self.tokenizer, embeds, steps)


def _randomise(module, gen) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _project_block(gen, d: int, p: int, h: int) -> dict[str, torch.Tensor]:
    """ProjectBlock's 28 tensors in the original names, random."""
    shapes = {"proj.0": (h, 3 * p), "proj.2": (h, h)}
    shapes |= {f"img_{g}_{x}_proj": (d, d) for g in ("low", "high") for x in "qkv"}
    shapes |= {f"{t}{x}_proj": (p, p) for t in ("", "txt_") for x in "qkv"}
    block = {}
    for name, shape in shapes.items():
        block[f"{name}.weight"] = torch.randn(shape, generator=gen) * 0.3
        block[f"{name}.bias"] = torch.randn(shape[0], generator=gen) * 0.2
    return block


def _images():
    rng = np.random.default_rng(3)
    return [
        Image.fromarray((rng.random(s + (3,)) * 255).astype("uint8")) for s in [(40, 150), (130, 45), (5, 9)]
    ]


@pytest.fixture(scope="module", params=list(VARIANTS))
def original(request, tmp_path_factory):
    return Original(tmp_path_factory.mktemp(request.param), request.param)


def test_vmllm_checkpoint_matches_the_original(tmp_path, original):
    ours = fovea.load(original.write(tmp_path / "ck"))
    assert ours.config.connector.fuser_type == "vmllm" and ours.config.image.mode == "pad"
    assert_fields_reach(ours.lm.config, released_lm_fields(len(original.tokenizer), "llama"))
    assert ours.config.connector.layers[-1] == (-2 if original.kind == "clip" else -1)
    for image in _images():
        inputs = ours.prepare(TEXT, images=[image])
        assert inputs["questions"] == [TEXT]
        assert (inputs["pixel_values"][0] - original.pixels(image)[0]).abs().max() < 1e-5
        expected, answer = original.answer(TEXT, image)
        with torch.no_grad():
            got = ours(**inputs).logits[0, -1]
        assert (got - expected).abs().max().item() < 1e-4
        assert ours.generate(TEXT, images=[image], template=None, max_new_tokens=8) == answer


def test_the_question_changes_the_visual_tokens_and_batches_equal_single_calls(tmp_path, original):
    ours = fovea.load(original.write(tmp_path / "ck"))
    image, questions = _images()[0], [TEXT, "<image>\nHow many shapes are there?"]
    with torch.no_grad():
        a, b = (ours.encode_images(ours.prepare(q, images=[image]).images) for q in questions)
    assert (a[0] - b[0]).abs().max() > 1e-3  # the gates saw another question
    alone = [ours.generate(q, images=[image], template=None, max_new_tokens=6) for q in questions]
    assert ours.generate(questions, images=[[image], [image]], template=None, max_new_tokens=6) == alone


def test_multi_turn_chat_and_convert(tmp_path, original):
    ours = fovea.load(original.write(tmp_path / "ck"))
    image = _images()[1]
    turns = [{"role": "user", "content": "What is it?"}]
    first = ours.chat(turns, images=[image], template="vicuna_v1", max_new_tokens=5)
    turns += [{"role": "assistant", "content": first}, {"role": "user", "content": "And now?"}]
    assert ours.prepare_chat(turns, [image], "vicuna_v1")["questions"] == ["<image>\nWhat is it?And now?"]
    assert isinstance(ours.chat(turns, images=[image], template="vicuna_v1", max_new_tokens=5), str)
    convert(tmp_path / "ck", tmp_path / "fv", to="fovea")
    again = fovea.load(tmp_path / "fv")
    inputs = ours.prepare(TEXT, images=[image])
    with torch.no_grad():
        assert torch.equal(again(**again.prepare(TEXT, images=[image])).logits, ours(**inputs).logits)
    with pytest.raises(fovea.FoveaError, match="fuser 'vmllm'"):
        convert(tmp_path / "ck", tmp_path / "hf", to="hf")


def test_weights_that_do_not_fit_the_tower_are_one_error(tmp_path, original):
    narrow = {k: v[: v.shape[0] // 2] if k == "q_proj.weight" else v for k, v in original.block.items()}
    with pytest.raises(CheckpointError, match=r"mm_projector\.q_proj\.weight has width"):
        fovea.load(original.write(tmp_path / "bad", narrow))


def test_a_pretrain_output_loads_on_its_base_lm(tmp_path, original):
    """Stage 1 writes only config.json (architectures still the base LM's) and mm_projector.bin."""
    base = tmp_path / "base"
    original.lm.save_pretrained(base)
    original.tokenizer.save_pretrained(base)
    full = original.write(tmp_path / "sft")
    raw = json.loads((full / "config.json").read_text())
    raw |= {"architectures": ["LlamaForCausalLM"], "_name_or_path": str(base), "image_aspect_ratio": "square"}
    stage1 = tmp_path / "pretrain"
    stage1.mkdir()
    (stage1 / "config.json").write_text(json.dumps(raw))
    torch.save({f"model.mm_projector.{k}": v for k, v in original.block.items()}, stage1 / "mm_projector.bin")
    ours, reference = fovea.load(stage1), fovea.load(full)
    assert ours.config.image.mode == "square" and ours.config.connector == reference.config.connector
    square = Image.fromarray((np.random.default_rng(5).random((40, 40, 3)) * 255).astype("uint8"))
    with torch.no_grad():  # a square image is the same under `square` and `pad`
        a = ours(**ours.prepare(TEXT, images=[square])).logits
        b = reference(**reference.prepare(TEXT, images=[square])).logits
    assert torch.equal(a, b)
