"""A fovea model that segments: [SEG] added and SAM attached to a tiny VLM; the teacher-forced
masks come from the last hidden state at each [SEG], given to images round-robin; segment()
answers then segments; the model saves and loads with its SAM."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fovea.errors import ConfigError, FoveaError
from fovea.seg.head import SEG_TOKEN, sam_inputs
from fovea.seg.model import add_segmentation, seg_forward, segment
from fovea.tiny import tiny_sam, tiny_vlm


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import SamModel

    vlm = tiny_vlm(mode="square", grid_pinpoints=None)
    add_segmentation(vlm, SamModel.from_pretrained(tiny_sam(tmp_path_factory.mktemp("sam") / "sam")))
    return vlm.eval()


def _image(seed=0, size=(60, 40)):
    return Image.fromarray(
        np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    )


def test_seg_is_one_special_token_with_its_own_embedding_row(model):
    ids = model.tokenizer("find it [SEG].", add_special_tokens=False)["input_ids"]
    seg = model.config.seg.token_id
    assert ids.count(seg) == 1 and model.tokenizer.convert_ids_to_tokens(seg) == SEG_TOKEN
    assert model.lm.get_input_embeddings().weight.shape[0] > seg
    assert model.config.lm["vocab_size"] == model.lm.get_input_embeddings().weight.shape[0]


def test_masks_come_from_the_last_hidden_state_at_each_seg_given_round_robin(model):
    """Independently: the LM's final hidden states (transformers' own output_hidden_states), the
    [SEG] rows picked by id, image i taking [SEG]s i, i + images, ...; then the head."""
    images = [_image(1), _image(2, (30, 50))]
    text = "<image>\n<image>\nsegment both: [SEG] and [SEG] and [SEG]"
    inputs = model.prepare(text, images, template=None)
    sam = sam_inputs(model.config.seg.processor(), images)
    with torch.no_grad():
        out = seg_forward(model, inputs, [sam])
        embeds = model.embed_inputs(inputs)
        full = model.lm(inputs_embeds=embeds, output_hidden_states=True)
        states = full.hidden_states[-1][0][inputs.input_ids[0] == model.config.seg.token_id]
        first = model.seg(states[0::2], model.seg.image_embeddings(sam[0].pixels[None]), sam[0])
        second = model.seg(states[1::2], model.seg.image_embeddings(sam[1].pixels[None]), sam[1])
    assert torch.allclose(out.logits, full.logits, atol=1e-5)
    assert [m.shape for m in out.masks[0]] == [(2, 40, 60), (1, 50, 30)]
    assert torch.allclose(out.masks[0][0], first, rtol=1e-4, atol=1e-9)
    assert torch.allclose(out.masks[0][1], second, rtol=1e-4, atol=1e-9)


def test_segment_answers_then_masks_each_seg_at_the_images_size(model, tmp_path):
    path = tmp_path / "a.png"
    _image(3, (48, 36)).save(path)
    result = segment(model, path, "segment the red circle", max_new_tokens=4, force=True)
    assert SEG_TOKEN in result.text
    assert result.masks.shape == (result.text.count(SEG_TOKEN), 36, 48) and result.masks.dtype == bool
    assert np.array_equal(result.masks, result.logits.numpy() > 0)
    with pytest.raises(ConfigError, match="the prompt is empty"):
        segment(model, path, "  ")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(FoveaError, match="bad.png"):
        segment(model, tmp_path / "bad.png", "segment it")


def test_a_segmenting_model_saves_and_loads_with_its_sam(model, tmp_path):
    import fovea

    model.save_pretrained(tmp_path / "seg")
    loaded = fovea.load(str(tmp_path / "seg"))
    assert loaded.config.seg == model.config.seg
    a, b = model.state_dict(), loaded.state_dict()
    assert {k for k in a if k.startswith("seg.")} == {k for k in b if k.startswith("seg.")}
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("seg."))
    image = _image(4)
    one = segment(model, image, "segment it", max_new_tokens=3, force=True)
    two = segment(loaded, image, "segment it", max_new_tokens=3, force=True)
    assert one.text == two.text and torch.allclose(one.logits, two.logits, rtol=1e-4, atol=1e-9)


def test_the_command_writes_masks_of_the_images_size_and_refuses_bad_input_in_one_line(
    model, tmp_path, capsys
):
    from fovea.cli import main

    model.save_pretrained(tmp_path / "seg")
    _image(5, (52, 30)).save(tmp_path / "a.png")
    argv = ["segment", "--model", str(tmp_path / "seg"), "--image", str(tmp_path / "a.png"), "--prompt",
            "segment the circle", "--force", "--max-new-tokens", "3", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "out" / "segment.json").read_text())
    assert record["masks"] and SEG_TOKEN in record["answer"]
    for item in record["masks"]:
        with Image.open(tmp_path / "out" / item["file"]) as mask:
            assert mask.size == (52, 30) and mask.mode == "L"
    with Image.open(tmp_path / "out" / "overlay.png") as over:
        assert over.size == (52, 30)
    capsys.readouterr()
    (tmp_path / "bad.png").write_bytes(b"not an image")
    for changed, expected in (
        (["--image", str(tmp_path / "bad.png")], "bad.png"),
        (["--prompt", " "], "--prompt is empty"),
    ):
        args = list(argv)
        flag = changed[0]
        args[args.index(flag) + 1] = changed[1]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0]
