"""Many images as MLCD-Embodied runs them: an original llava_qwen checkpoint (grid newlines, bilinear
pooling) given 12 images, against a forward written here from the original's code.

The reference follows deepglint/unicom `mlcd_vl/llava` (identical to LLaVA-VL/LLaVA-NeXT here):
train.py turns a sample of more than 8 images into one-frame "video" items, each `expand2square`d
with the mean colour and run through the CLIP processor; llava_arch.py encodes them (tower, layer
-2 without CLS, then the projector), `get_2dPool`s each after the projector (bilinear to ceil(h/2) x
ceil(w/2), stride 2 whatever the config says), and `add_token_per_grid` appends the learned newline
after every pooled row. Each `<image>` placeholder takes one item's features.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor

import fovea
from fovea.tiny import tiny_tokenizer

from llava_layouts import write_original
from original_reference import PINPOINTS, reference_next, tower_dir, vision_fields

IMAGE_TOKEN_INDEX = -200


def _expand2square(image: Image.Image, background: tuple) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def _get_2d_pool(features: torch.Tensor, side: int, stride: int = 2) -> torch.Tensor:
    frames, _, dim = features.shape
    grid = features.view(frames, side, side, -1).permute(0, 3, 1, 2).contiguous()
    scaled = [math.ceil(side / stride), math.ceil(side / stride)]
    grid = torch.nn.functional.interpolate(grid, size=scaled, mode="bilinear")
    return grid.permute(0, 2, 3, 1).view(frames, -1, dim)


def _add_token_per_grid(features: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    frames = features.shape[0]
    side = int(math.sqrt(features.shape[1]))
    grid = features.view(frames, 1, side, side, -1).permute(4, 0, 2, 1, 3).contiguous()
    grid = grid.flatten(1, 2).flatten(2, 3)
    grid = torch.cat((grid, newline[:, None, None].expand(*grid.shape[:-1], 1)), dim=-1)
    return grid.flatten(1, 2).transpose(0, 1)


def _original_logits(reference, tower_path, images, text_ids: list[list[int]]) -> tuple[torch.Tensor, int]:
    """Last-position logits and visual tokens per image, the original's way."""
    processor = CLIPImageProcessor.from_pretrained(tower_path)
    background = tuple(int(x * 255) for x in processor.image_mean)
    pixels = torch.cat(
        [
            processor.preprocess(_expand2square(im, background), return_tensors="pt")["pixel_values"]
            for im in images
        ]
    )
    with torch.no_grad():
        hidden = reference.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        projected = reference.model.multi_modal_projector(hidden)
        side = int(math.sqrt(projected.shape[1]))
        items = [
            _add_token_per_grid(_get_2d_pool(one[None], side), reference.model.image_newline)
            for one in projected
        ]
        embed = reference.get_input_embeddings()
        pieces = []
        for i, chunk in enumerate(text_ids):
            pieces.append(embed(torch.tensor(chunk, dtype=torch.long)))
            if i < len(items):
                pieces.append(items[i])
        embeds = torch.cat(pieces)[None]
        hidden = reference.model.language_model(inputs_embeds=embeds).last_hidden_state
        return reference.lm_head(hidden)[0, -1], items[0].shape[0]


def test_twelve_images_are_pooled_frames_with_grid_newlines(tmp_path):
    tower = tower_dir(tmp_path / "tower", "mlcd", vision_fields("mlcd"))
    reference, _ = reference_next("mlcd", tower)
    ck = write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    raw = json.loads((ck / "config.json").read_text())
    fields = {"mm_newline_position": "grid", "mm_spatial_pool_mode": "bilinear", "mm_spatial_pool_stride": 4}
    (ck / "config.json").write_text(
        json.dumps({**raw, **fields})
    )  # the stride is ignored, as the original does

    rng = np.random.default_rng(7)
    images = [
        Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))
        for h, w in [(40, 90), (70, 30), (56, 56)] * 4
    ]
    text = "".join(f"Image {i + 1}:\n<image>\n" for i in range(12)) + "Which one is brightest?"
    ours = fovea.load(ck)
    inputs = ours.prepare(text, images=images, template=None)

    tokenizer = tiny_tokenizer(image_token=False)  # what write_original saved beside the weights
    chunks = [tokenizer(part, add_special_tokens=False).input_ids for part in text.split("<image>")]
    expected, per_image = _original_logits(reference, tmp_path / "tower", images, chunks)

    # 4x4 patch tokens per 56 px image pool to 2x2, plus a newline per row: 6 per image
    assert per_image == 6 and all(layout.frames == 1 for layout in inputs["image_layouts"])
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(ours.config.image_token_id) == 12 * per_image
    collapsed = [t for i, t in enumerate(ids) if t != ours.config.image_token_id or ids[i - 1] != t]
    flat = [t for chunk in chunks[:-1] for t in (*chunk, ours.config.image_token_id)] + chunks[-1]
    assert collapsed == flat
    with torch.no_grad():
        got = ours(**inputs).logits[0, -1]
    assert (got - expected).abs().max().item() < 1e-4

    # at 8 images the rule does not apply: each is a whole AnyRes image, as the original runs them
    eight = ours.prepare("<image>" * 8 + "\nAnd now?", images=images[:8], template=None)
    assert all(layout.frames == 0 for layout in eight["image_layouts"])


def test_an_mlcd_embodied_export_to_hf_says_the_frames_rule_does_not_carry(tmp_path):
    """Anyres with grid newlines: `--to hf` writes LlavaNext (the closest transformers form) and says
    that a prompt of many images runs as images there; it does not pretend otherwise."""
    from fovea.checkpoints.export import convert

    tower = tower_dir(tmp_path / "tower", "mlcd", vision_fields("mlcd"))
    reference, _ = reference_next("mlcd", tower)
    ck = write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    raw = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**raw, "mm_newline_position": "grid"}))
    report = convert(ck, tmp_path / "hf", to="hf")
    assert json.loads((report.destination / "config.json").read_text())["model_type"] == "llava_next"
    assert any("LlavaNext has no frames: a prompt with more than 8 images" in note for note in report.notes)
