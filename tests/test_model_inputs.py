"""One path for model inputs: `prepare`, the serving batch and the training collator all reach the
model through `embed_inputs`, and the fuser learns which sample each image view belongs to."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fovea.data.dataset import collate
from fovea.tiny import tiny_vlm


@pytest.fixture(scope="module")
def model():
    return tiny_vlm().eval()


def _image(h, w, seed=0):
    return Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8"))


def _seen_samples(model, monkeypatch) -> list:
    seen = []
    original = type(model.connector.fuser).forward

    def spy(self, inputs):
        seen.append(inputs.samples.tolist())
        return original(self, inputs)

    monkeypatch.setattr(type(model.connector.fuser), "forward", spy)
    return seen


def _views(layouts) -> list[int]:
    return [layout.num_views for layout in layouts]


def test_a_batch_of_prompts_tells_the_fuser_each_views_sample(model, monkeypatch):
    seen = _seen_samples(model, monkeypatch)
    images = [[_image(50, 90)], [], [_image(90, 40, 1), _image(20, 20, 2)]]
    inputs = model.prepare(["<image> a", "b", "<image><image> c"], images=images)
    assert inputs["image_samples"] == [0, 2, 2]
    with torch.no_grad():
        model.embed_inputs(inputs)
    a, b, c = _views(inputs["image_layouts"])
    assert seen == [[0] * a + [2] * (b + c)]


def test_the_serving_batch_renumbers_rows(model, monkeypatch):
    parts = [
        model.prepare("<image> a", images=[_image(50, 90)]),
        model.prepare("<image> b", images=[_image(20, 20)]),
    ]
    joined = model.join_inputs(parts)
    assert joined["image_samples"] == [0, 1]
    assert joined["pixel_values"].shape[0] == sum(p["pixel_values"].shape[0] for p in parts)


def test_the_training_collator_gives_each_image_its_row():
    layouts = [["L0"], [], ["L2a", "L2b"]]
    items = [
        {"input_ids": torch.ones(3, dtype=torch.long), "labels": torch.ones(3, dtype=torch.long), "pixel_values": None,
         "image_layouts": layout, "id": str(i)}
        for i, layout in enumerate(layouts)
    ]  # fmt: skip
    assert collate(items, 0)["image_samples"] == [0, 2, 2]


def test_embedding_through_the_one_path_equals_the_explicit_call(model):
    inputs = model.prepare("<image> what?", images=[_image(50, 90)])
    with torch.no_grad():
        a = model.embed_inputs(inputs)
        b = model.embed(inputs["input_ids"], inputs["pixel_values"], inputs["image_layouts"])
    assert torch.equal(a, b)
