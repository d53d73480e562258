"""MLCD-Seg's mask path on a tiny random SAM: the [SEG] prompt runs through SAM as SamModel's own
forward runs a sparse prompt, masks come back as SAM's post-processing brings them, the image
encoder is frozen; the mask losses and cIoU / gIoU against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fovea.seg.head import SegHead, sam_inputs, upscale
from fovea.seg.losses import dice, mask_loss, sigmoid_bce
from fovea.seg.metrics import intersection_union, refer_scores
from fovea.tiny import tiny_sam


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    return tiny_sam(tmp_path_factory.mktemp("sam") / "sam")


def _head(sam_dir, width=24):
    from transformers import SamImageProcessorPil, SamModel

    torch.manual_seed(0)
    return SegHead(SamModel.from_pretrained(sam_dir).eval(), width), SamImageProcessorPil.from_pretrained(
        sam_dir
    )


def test_a_seg_prompt_runs_as_sammodel_runs_a_sparse_prompt(sam_dir, monkeypatch):
    """SamModel's own forward, its prompt encoder made to return the projected [SEG]s as the sparse
    prompt (and its no-mask dense prompt), gives the head's masks after SAM's post-processing."""
    head, processor = _head(sam_dir)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (70, 110, 3), dtype=np.uint8))
    sam_in = sam_inputs(processor, [image])[0]
    states = torch.randn(3, 24)
    with torch.no_grad():
        embeddings = head.image_embeddings(sam_in.pixels[None])
        got = head(states, embeddings, sam_in)
        prompts = head.text2sam(states)[None, :, None, :]
        encoder = head.sam.prompt_encoder
        dense = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *embeddings.shape[-2:])
        monkeypatch.setattr(encoder, "forward", lambda *a, **k: (prompts, dense))
        out = head.sam(image_embeddings=embeddings, multimask_output=False)
        expected = processor.post_process_masks(
            out.pred_masks, [sam_in.original], [sam_in.resized], binarize=False
        )[0][:, 0]  # image 0: (prompts, 1 mask, H, W) -> (prompts, H, W)
    assert got.shape == expected.shape == (3, 70, 110)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-9) and got.abs().max() > 0


def test_upscaling_is_sams_post_processing(sam_dir):
    _, processor = _head(sam_dir)
    low = torch.randn(2, 64, 64)
    expected = processor.post_process_masks([low[None]], [(70, 110)], [(163, 256)], binarize=False)[0][0]
    assert torch.allclose(upscale(low, (70, 110), (163, 256), 256), expected, atol=1e-6)


def test_the_image_encoder_is_frozen_and_the_rest_trains(sam_dir):
    head, processor = _head(sam_dir)
    sam_in = sam_inputs(processor, [Image.new("RGB", (50, 40), (200, 30, 30))])[0]
    logits = head(torch.randn(1, 24), head.image_embeddings(sam_in.pixels[None]), sam_in)
    logits.sum().backward()
    assert all(p.grad is None for p in head.sam.vision_encoder.parameters())
    for part in (head.text2sam, head.sam.mask_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert head.sam.prompt_encoder.no_mask_embed.weight.grad is not None


def test_mask_losses_equal_the_formulas_by_hand():
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]], [[-2.0, 1.0], [0.0, 4.0]]])
    target = torch.tensor([[[1, 0], [1, 0]], [[0, 0], [0, 1]]])
    bce_by_hand = 0.0
    dice_by_hand = 0.0
    for x, y in zip(logits.tolist(), target.tolist()):
        xs, ys = sum(x, []), sum(y, [])
        bce_by_hand += sum(-(t * math.log(1 / (1 + math.exp(-v))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-v))))
                           for v, t in zip(xs, ys)) / 4  # fmt: skip
        p = [1 / (1 + math.exp(-v)) for v in xs]
        numerator = 2 * sum(a / 1000 * t for a, t in zip(p, ys))
        denominator = sum(a / 1000 for a in p) + sum(t / 1000 for t in ys)
        dice_by_hand += 1 - (numerator + 1e-6) / (denominator + 1e-6)
    assert sigmoid_bce(logits, target).item() == pytest.approx(bce_by_hand / 2, rel=1e-5)
    assert dice(logits, target).item() == pytest.approx(dice_by_hand / 2, rel=1e-5)
    # a batch: one sample of 2 masks, one of 1 -> the per-mask mean, weights 2 and 0.5
    one = (logits[:1], target[:1])
    loss, parts = mask_loss([logits, one[0]], [target, one[1]])
    bce = (sigmoid_bce(logits, target) * 2 + sigmoid_bce(*one)) / 3
    dices = (dice(logits, target) * 2 + dice(*one)) / 3
    assert loss.item() == pytest.approx(2.0 * bce.item() + 0.5 * dices.item(), rel=1e-5)
    assert parts["mask_bce"] == pytest.approx(bce.item(), rel=1e-5)


def test_ciou_and_giou_by_hand_including_empty_masks():
    full = np.ones((2, 2))
    half = np.array([[1, 1], [0, 0]])
    empty = np.zeros((2, 2))
    assert intersection_union(half, full) == (2, 4)
    samples = [
        [intersection_union(half, full)],  # IoU 2/4
        [intersection_union(empty, empty)],  # nothing to find, nothing found: 1.0
        [intersection_union(full, empty), intersection_union(half, half)],  # 0 and 1: sample mean 0.5
    ]
    scores = refer_scores(samples)
    assert scores["ciou"] == pytest.approx((2 + 0 + 0 + 2) / (4 + 0 + 4 + 2))
    assert scores["giou"] == pytest.approx((2 / (4 + 1e-5) + 1.0 + (0 + 2 / (2 + 1e-5)) / 2) / 3)
    assert scores["samples"] == 3 and scores["masks"] == 4
    with pytest.raises(ValueError, match="prediction for a"):
        intersection_union(np.ones((2, 3)), full)
