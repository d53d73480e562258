"""MLCD-Seg's released layout: a tiny random checkpoint in the original's names loads into fovea with
logits and mask logits equal to an independent forward (1e-4, fp32).

The checkpoint is an original LLaVA-NeXT one (tests/llava_layouts.py, from a transformers LlavaNext
reference) plus SAM under ``model.sam.*`` in segment_anything's names and ``model.text2sam_projection``,
as ``mlcd_vl/downstream`` saves them. Its SAM is away from SAM-H in every size the weights carry (and
its image is not a multiple of the window, so windows pad); the reference runs it with
tests/sam_reference.py, written from the original's modules, never through transformers' SamModel.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fovea
import sam_reference as ref_sam
from fovea.errors import CheckpointError
from fovea.seg.head import sam_inputs
from fovea.seg.model import seg_forward
from fovea.tiny import tiny_tokenizer

from llava_layouts import write_original
from original_reference import PINPOINTS, reference_next, sample_images, tower_dir, vision_fields

TEXT = "<image>\nSegment the wide band. [SEG] and the rest [SEG] done"


def _tokenizers():
    """The checkpoint's (no ``<image>``, ``[SEG]`` added as MLCD-Seg adds it) and the reference's
    (the same ids, ``<image>`` after them for transformers' LlavaNext)."""
    ours = tiny_tokenizer(image_token=False)
    ours.add_tokens(["[SEG]"], special_tokens=True)
    theirs = tiny_tokenizer(image_token=False)
    theirs.add_tokens(["[SEG]"], special_tokens=True)
    theirs.add_tokens(["<image>"], special_tokens=True)
    return ours, theirs


def _projection(width: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"model.text2sam_projection.0.weight": torch.randn(32, width, generator=g) / width**0.5,
            "model.text2sam_projection.0.bias": 0.1 * torch.randn(32, generator=g),
            "model.text2sam_projection.2.weight": torch.randn(32, 32, generator=g) / 32**0.5,
            "model.text2sam_projection.2.bias": 0.1 * torch.randn(32, generator=g)}  # fmt: skip


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlcd_seg")
    tower = tower_dir(root / "tower", "mlcd", vision_fields("mlcd"))
    ours_tok, ref_tok = _tokenizers()
    reference, processor = reference_next("mlcd", tower, tokenizer=ref_tok)
    sam = ref_sam.random_sam()
    for key in ("weight", "bias"):  # tokens of variance ~1e-5 into the first LayerNorm: its eps (1e-5) shows
        sam[f"mask_decoder.transformer.layers.0.self_attn.out_proj.{key}"] *= 3e-3
    width = reference.config.text_config.hidden_size
    extra = {"model.sam." + k: v for k, v in sam.items()} | _projection(width)
    write_original(reference, root / "ck", tower_dir=root / "tower", pinpoints_hw=PINPOINTS, extra=extra,
                   tokenizer=ours_tok, fields={"sam_path": "sam_vit_h_4b8939.pth"})  # fmt: skip
    return root / "ck", reference, processor, sam, extra


def test_sam_is_read_from_the_weights_shapes(released):
    directory, *_ = released
    model = fovea.load(directory)
    sam = model.config.seg.sam
    assert model.config.seg.token_id == model.tokenizer.convert_tokens_to_ids("[SEG]") == 320
    assert {k: sam["vision_config"][k] for k in ("hidden_size", "num_attention_heads", "image_size", "window_size")} == {
        "hidden_size": 32, "num_attention_heads": 2, "image_size": 80, "window_size": 2}  # fmt: skip
    assert sam["vision_config"]["global_attn_indexes"] == [1]
    assert sam["mask_decoder_config"]["num_attention_heads"] == 8
    assert sam["mask_decoder_config"]["iou_head_hidden_dim"] == 24
    assert sam["mask_decoder_config"]["layer_norm_eps"] == 1e-5


def test_logits_and_mask_logits_equal_the_original_forward(released):
    directory, reference, processor, sam, extra = released
    model = fovea.load(directory)
    image = sample_images()[0]  # 40 x 150: the SAM view is padded below
    inputs = model.prepare(TEXT, images=[image])
    batch = processor(images=[image], text=TEXT, return_tensors="pt")
    ids = inputs["input_ids"].clone()
    ids[ids == model.config.image_token_id] = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert torch.equal(ids, batch["input_ids"])

    got = seg_forward(model, inputs, [sam_inputs(model.config.seg.processor(), [image])])
    with torch.no_grad():
        logits = reference(**batch).logits
        hidden = reference.model(**batch).last_hidden_state[0]  # after the LM's final norm
        states = hidden[batch["input_ids"][0] == 320]
        p = "model.text2sam_projection."
        prompts = F.linear(F.gelu(F.linear(states, extra[p + "0.weight"], extra[p + "0.bias"])),
                           extra[p + "2.weight"], extra[p + "2.bias"])  # fmt: skip
        pixels, original, resized = ref_sam.preprocess(image, 80)
        embeddings = ref_sam.image_encoder(sam, pixels[None], heads=2, window=2, global_blocks=(1,))
        low = ref_sam.mask_decoder(sam, embeddings, prompts)
        expected = ref_sam.postprocess(low, 80, resized, original)
    assert (got.logits - logits).abs().max().item() < 1e-4
    masks = got.masks[0][0]
    assert masks.shape == (2, 40, 150) == expected.shape
    assert expected.abs().max() > 1  # the masks are not trivially near zero
    assert (masks - expected).abs().max().item() < 1e-4


def test_the_loaded_model_segments_and_saves_as_fovea(released, tmp_path):
    directory, *_ = released
    model = fovea.load(directory)
    result = model.segment(sample_images()[1], "Segment the tall band.", max_new_tokens=4, force=True)
    assert result.masks.shape[1:] == (120, 50) and result.masks.shape[0] >= 1
    model.save_pretrained(tmp_path / "again")
    again = fovea.load(tmp_path / "again")
    assert torch.equal(
        again.seg.sam.mask_decoder.iou_token.weight, model.seg.sam.mask_decoder.iou_token.weight
    )


def test_sam_weights_without_a_seg_token_is_one_line(released, tmp_path):
    directory, reference, *_ = released
    import shutil

    broken = tmp_path / "ck"
    shutil.copytree(directory, broken)
    tiny_tokenizer(image_token=False).save_pretrained(broken)
    with pytest.raises(
        CheckpointError, match=r"config.json: holds MLCD-Seg's SAM weights, but its tokenizer has no \[SEG\]"
    ):
        fovea.load(broken)


def test_the_hub_copys_qwen2_tag_reads_the_same(released, tmp_path):
    """MLCD-Seg's hub copy is tagged ``qwen2`` / custom code: the bare LM type with ``mm_vision_tower``."""
    import json
    import shutil

    directory, *_ = released
    edited = tmp_path / "ck"
    shutil.copytree(directory, edited)
    raw = json.loads((edited / "config.json").read_text())
    raw |= {"model_type": "qwen2", "architectures": ["MLCDSegForCausalLM"],
            "auto_map": {"AutoModelForCausalLM": "mlcd_seg.MLCDSegForCausalLM"}}  # fmt: skip
    (edited / "config.json").write_text(json.dumps(raw))
    image = sample_images()[0]
    first, second = fovea.load(directory), fovea.load(edited)
    views = [sam_inputs(first.config.seg.processor(), [image])]
    a = seg_forward(first, first.prepare(TEXT, images=[image]), views)
    b = seg_forward(second, second.prepare(TEXT, images=[image]), views)
    assert second.config.template == "qwen_1_5"
    assert torch.equal(a.logits, b.logits) and torch.equal(a.masks[0][0], b.masks[0][0])
