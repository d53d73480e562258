"""transformers' LlavaOnevision checkpoints: fovea.load gives transformers' logits and greedy text
for one wide image (the anyres_max shrink active), three images (base view only) and a 9-frame
video (pixel_values_videos: bilinear 2x2 pooling, one newline per video).

The reference is a tiny random LlavaOnevisionForConditionalGeneration saved by transformers with
its PIL image processor. transformers' video processor needs torchvision (absent here), so the
video's pixels are its frames through the image processor's base view (resized to a square and
normalised: what the video processor does); fovea makes its own from the frames and a test checks
they agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
    LlavaOnevisionImageProcessorPil,
)

import fovea
from fovea.tiny import tiny_tokenizer

from original_reference import randomise, tower_dir, vision_fields
from released_lm import llava_text

PINPOINTS = [[h * 56, w * 56] for w in (1, 2, 3) for h in (1, 2, 3)]


@pytest.fixture(scope="module")
def onevision(tmp_path_factory):
    root = tmp_path_factory.mktemp("onevision")
    tower = tower_dir(root / "tower", "siglip", vision_fields("siglip"))
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["<video>"], special_tokens=True)
    config = LlavaOnevisionConfig(
        vision_config={**tower.config.to_dict(), "num_hidden_layers": 2, "vision_use_head": False},
        **llava_text(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_aspect_ratio="anyres_max_1",
        image_grid_pinpoints=PINPOINTS,
    )  # the class's own defaults: vision_feature_layer -1, select strategy "full"
    reference = LlavaOnevisionForConditionalGeneration(config).eval()
    randomise(reference)
    processor = LlavaOnevisionImageProcessorPil(
        size={"height": 56, "width": 56},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        image_grid_pinpoints=PINPOINTS,
    )
    reference.save_pretrained(root / "ck")
    processor.save_pretrained(root / "ck")
    tokenizer.save_pretrained(root / "ck")
    return reference, processor, tokenizer, fovea.load(root / "ck")


def _image(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8"))


def _agree(ours, reference, tokenizer, inputs, placeholder: str, **pixels) -> str:
    """Last-position logits within 1e-4, and the same 8 greedy tokens (their text returned)."""
    ids = inputs["input_ids"].clone()
    ids[ids == ours.config.image_token_id] = tokenizer.convert_tokens_to_ids(placeholder)
    with torch.no_grad():
        expected = reference(input_ids=ids, **pixels).logits[0, -1]
        got = ours(**inputs).logits[0, -1]
        assert (got - expected).abs().max().item() < 1e-4
        eos = tokenizer.eos_token_id
        out = reference.generate(
            input_ids=ids, **pixels, max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=eos
        )
    from fovea.model.running_batch import run_to_end

    sampling = ours.sampling(8)
    with torch.inference_mode():
        ours_text = run_to_end(ours, [inputs], [ours.sequence(inputs, sampling, None)])[0].text
    expected_text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert ours_text == expected_text
    return expected_text


def test_the_layout_is_read_as_onevision_runs(onevision):
    _, _, _, ours = onevision
    assert ours.config.image.mode == "anyres_max_1" and ours.config.image.multi_image_mode == "square"
    assert ours.config.frames.newline == "one_token" and ours.config.image.frames_above is None
    assert ours.config.connector.layers == [-1]


def test_one_wide_image_with_the_anyres_max_shrink(onevision):
    reference, processor, tokenizer, ours = onevision
    image = _image(60, 230, 1)
    inputs = ours.prepare("<image>\nWhat is it?", images=[image])
    layout = inputs["image_layouts"][0]
    assert ours.num_image_tokens(layout) < ours.num_image_tokens(ours.processor.layout((60, 230), "anyres"))
    pixels = processor(images=[image], return_tensors="pt")
    _agree(ours, reference, tokenizer, inputs, "<image>", pixel_values=pixels["pixel_values"],
           image_sizes=pixels["image_sizes"], batch_num_images=torch.tensor([1]))  # fmt: skip


def test_three_images_each_its_base_view(onevision):
    reference, processor, tokenizer, ours = onevision
    images = [_image(60, 230, 2), _image(120, 50, 3), _image(56, 56, 4)]
    inputs = ours.prepare("<image><image><image>\nWhich differs?", images=images)
    assert all(layout.grid is None for layout in inputs["image_layouts"])
    pixels = processor(images=images, return_tensors="pt")
    _agree(ours, reference, tokenizer, inputs, "<image>", pixel_values=pixels["pixel_values"],
           image_sizes=pixels["image_sizes"], batch_num_images=torch.tensor([3]))  # fmt: skip


def test_a_nine_frame_video_pooled_with_one_newline(onevision):
    reference, processor, tokenizer, ours = onevision
    frames = [_image(48, 64, 10 + i) for i in range(9)]
    inputs = ours.prepare("<video>\nWhat happens?", videos=[frames])
    video = torch.stack([processor(images=[f], return_tensors="pt")["pixel_values"][0, 0] for f in frames])
    assert (inputs["pixel_values"] - video).abs().max() < 1e-5
    # 56 px, patch 14: 4x4 tokens a frame pool to 2x2; 9 frames and one newline
    assert int((inputs["input_ids"] == ours.config.image_token_id).sum()) == 9 * 4 + 1
    expected = _agree(ours, reference, tokenizer, inputs, "<video>", pixel_values_videos=video[None])
    assert (
        ours.generate("<video>\nWhat happens?", videos=[frames], template=None, max_new_tokens=8) == expected
    )


def test_convert_to_hf_writes_onevision_back_and_transformers_runs_it(onevision, tmp_path):
    """OneVision in, `--to hf` out: LlavaOnevision again (the model needs it), which transformers
    loads and runs to the same logits as the checkpoint it came from, on an image and a video."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from fovea.checkpoints.export import convert

    reference, processor, tokenizer, ours = onevision
    report = convert(ours.checkpoint_dir, tmp_path / "out", to="hf")
    back = LlavaOnevisionForConditionalGeneration.from_pretrained(report.destination).eval()
    assert (
        back.config.vision_aspect_ratio == "anyres_max_1"
        and back.config.video_token_index == reference.config.video_token_index
    )
    frames = [_image(48, 64, 30 + i) for i in range(9)]
    video = torch.stack([processor(images=[f], return_tensors="pt")["pixel_values"][0, 0] for f in frames])
    inputs = ours.prepare("<video>\nWhat happens?", videos=[frames])
    ids = inputs["input_ids"].clone()
    ids[ids == ours.config.image_token_id] = reference.config.video_token_index
    with torch.no_grad():
        expected = reference(input_ids=ids, pixel_values_videos=video[None]).logits[0, -1]
        got = back(input_ids=ids, pixel_values_videos=video[None]).logits[0, -1]
    assert (got - expected).abs().max().item() < 1e-5


def test_mlcd_embodied_grid_newlines_are_refused_by_name_for_onevision(onevision, tmp_path):
    import pytest

    from fovea.checkpoints.llava_onevision_writer import LlavaOnevisionWriter
    from fovea.errors import ConfigError
    from fovea.model.packing import FramesConfig

    _, _, _, ours = onevision
    config = __import__("copy").deepcopy(ours.config)
    config.frames = FramesConfig(newline="grid")
    with pytest.raises(
        ConfigError, match="frames.newline 'grid' .*MLCD-Embodied's grid has no transformers form"
    ):
        LlavaOnevisionWriter.refuse(config)
    config.frames, config.image.frames_above = FramesConfig(newline="one_token"), 8
    with pytest.raises(ConfigError, match="image.frames_above 8"):
        LlavaOnevisionWriter.refuse(config)
