"""VisionLanguageModel: token counting, packing, prompts, batching, templates, merging errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fovea.errors import ConfigError
from fovea.imaging.processor import ImageLayout
from fovea.model.packing import count_tokens, pack_image
from fovea.model.templates import TEMPLATES


def _img(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8"))


@pytest.mark.parametrize("merge", ["spatial_unpad", "spatial", "flat"])
@pytest.mark.parametrize("mode", ["anyres", "anyres_max_2", "square"])
def test_count_tokens_equals_packed_length(merge, mode):
    rng = np.random.default_rng(0)
    side, dim = (6, 6), 4
    newline = torch.zeros(dim)
    for _ in range(60):
        size = (int(rng.integers(1, 3000)), int(rng.integers(1, 3000)))
        grid = (int(rng.integers(1, 5)), int(rng.integers(1, 5))) if mode != "square" else None
        layout = ImageLayout(size=size, mode=mode, grid=grid)
        views = torch.randn(layout.num_views, side[0] * side[1], dim)
        packed = pack_image(views, layout, side, merge, newline)
        assert packed.shape[0] == count_tokens(layout, side, 0, merge, newline=True), (size, grid)


def test_anyres_max_shrinks_large_grids():
    layout = ImageLayout(size=(1000, 1000), mode="anyres_max_1", grid=(3, 3))
    full = ImageLayout(size=(1000, 1000), mode="anyres", grid=(3, 3))
    assert count_tokens(layout, (6, 6), 0, "spatial_unpad", True) < count_tokens(
        full, (6, 6), 0, "spatial_unpad", True
    )


def test_placeholder_mismatch_names_both_counts(tiny_model):
    with pytest.raises(ConfigError, match="2 <image> tags but 1 images"):
        tiny_model.prepare("<image><image> hi", images=[_img(30, 30)])
    inputs = tiny_model.prepare("<image>\nhi", images=[_img(30, 30)])
    ids = inputs["input_ids"].clone()
    ids[0, -1] = tiny_model.config.image_token_id  # one placeholder too many
    with pytest.raises(ValueError, match=r"\d+ placeholders in the text, \d+ visual tokens"):
        tiny_model(ids, pixel_values=inputs["pixel_values"], image_layouts=inputs["image_layouts"])
    with pytest.raises(ValueError, match="no images were given"):
        tiny_model(ids)


def test_text_only_and_untagged_images(tiny_model):
    text_only = tiny_model.prepare("Hello there", template="qwen_1_5")
    assert text_only["pixel_values"] is None
    assert tiny_model(**text_only).logits.shape[1] == text_only["input_ids"].shape[1]
    untagged = tiny_model.prepare("What is it?", images=[_img(20, 50)])
    tagged = tiny_model.prepare("<image>\nWhat is it?", images=[_img(20, 50)])
    assert torch.equal(untagged["input_ids"], tagged["input_ids"])


def test_batch_equals_single(tiny_model):
    prompts = ["<image>\nWhat colour?", "<image>\n<image>\nCompare them, please."]
    images = [[_img(40, 90, 1)], [_img(80, 30, 2), _img(50, 50, 3)]]
    batch = tiny_model.prepare(prompts, images=images, template="qwen_1_5")
    with torch.no_grad():
        batched = tiny_model(**batch).logits[:, -1]
        for i in range(2):
            single = tiny_model(
                **tiny_model.prepare(prompts[i], images=images[i], template="qwen_1_5")
            ).logits[0, -1]
            assert (batched[i] - single).abs().max() < 1e-4
    answers = tiny_model.generate(prompts, images=images, max_new_tokens=4)
    assert answers[1] == tiny_model.generate(prompts[1], images=images[1], max_new_tokens=4)


def test_logits_to_keep(tiny_model):
    inputs = tiny_model.prepare("<image>\nHi", images=[_img(30, 60)])
    with torch.no_grad():
        full = tiny_model(**inputs).logits
        last = tiny_model(**inputs, logits_to_keep=1).logits
    assert last.shape[1] == 1 and torch.allclose(last[0, -1], full[0, -1], atol=1e-6)


EXPECTED_PROMPTS = {
    "plain": "<image>",
    "qwen_1_5": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>hi<|im_end|>\n"
    "<|im_start|>assistant\n",
    "vicuna_v1": "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: <image>hi ASSISTANT:",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, and assist the user with a variety of "
    "tasks using natural language.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<image>hi<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
}


@pytest.mark.parametrize("name", TEMPLATES.names())
def test_templates_prompt_and_spans(name):
    template = TEMPLATES.get(name)
    assert template.prompt("<image>hi", bos_token="<s>") == EXPECTED_PROMPTS[name]
    messages = [
        {"role": "user", "content": "<image>Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    rendered = template.render(messages)
    answers = [rendered.text[t.start : t.end] for t in rendered.turns if t.role == "assistant"]
    assert answers == ["A1", "A2"]
    closes = [rendered.text[t.end : t.close] for t in rendered.turns if t.role == "assistant"]
    assert all(c.strip() == template.stop[0].strip() for c in closes)


@pytest.mark.parametrize("pool", ["bilinear", "average", "max"])
@pytest.mark.parametrize("position", ["grid", "frame", "one_token", "no_token", None])
@pytest.mark.parametrize("learned", [True, False])
def test_frames_count_equals_packed_length(pool, position, learned):
    from fovea.model.packing import FramesConfig

    config = FramesConfig(pool=pool, newline=position)
    newline = torch.zeros(4) if learned else None
    for side, frames in [((24, 24), 3), ((27, 27), 1), ((7, 5), 9), ((1, 1), 2)]:
        layout = ImageLayout(size=(100, 80), mode="pad", frames=frames)
        views = torch.randn(frames, side[0] * side[1], 4)
        if pool != "bilinear" and min(side) < 2:
            with pytest.raises(ValueError, match="needs frames of at least 2x2 tokens"):
                count_tokens(layout, side, 0, "spatial_unpad", learned, config)
            continue
        if not learned and position in ("grid", "frame"):
            with pytest.raises(ValueError, match="learned image_newline"):
                pack_image(views, layout, side, "spatial_unpad", newline, config)
            continue
        packed = pack_image(views, layout, side, "spatial_unpad", newline, config)
        assert packed.shape[0] == count_tokens(layout, side, 0, "spatial_unpad", learned, config), (
            side,
            frames,
        )


def test_frames_token_counts_are_the_published_ones():
    """MLCD-L-336 (24x24) pools to 12x12 = 144 per frame, 156 with grid newlines; SigLIP-384 (27x27)
    to 14x14 = 196, 210 with grid newlines (next-capabilities.md §3)."""
    from fovea.model.packing import FramesConfig

    one = ImageLayout(size=(336, 336), mode="pad", frames=1)
    for side, pooled, grid in [((24, 24), 144, 156), ((27, 27), 196, 210)]:
        assert count_tokens(one, side, 0, "spatial_unpad", True, FramesConfig(newline="no_token")) == pooled
        assert count_tokens(one, side, 0, "spatial_unpad", True, FramesConfig()) == grid
    video = ImageLayout(size=(336, 336), mode="square", frames=32)
    assert (
        count_tokens(video, (24, 24), 0, "spatial_unpad", True, FramesConfig(newline="one_token"))
        == 32 * 144 + 1
    )


def test_bilinear_pooling_by_two_is_the_mean_of_each_2x2_block():
    """On an even grid, bilinear resizing to half (align_corners off) averages each 2x2 block:
    the pooled frame is what avg_pool2d gives, a check that the layout (rows, cols) is right."""
    from fovea.model.packing import FramesConfig

    views = torch.randn(2, 36, 3)
    layout = ImageLayout(size=(6, 6), mode="pad", frames=2)
    got = pack_image(views, layout, (6, 6), "spatial_unpad", None, FramesConfig(newline="no_token"))
    expected = torch.nn.functional.avg_pool2d(views.view(2, 6, 6, 3).permute(0, 3, 1, 2), 2)
    assert torch.allclose(got, expected.permute(0, 2, 3, 1).reshape(-1, 3), atol=1e-6)
