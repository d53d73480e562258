"""fovea.load + prepare equals transformers' LlavaNext processor + model on the same checkpoint.

Tiny random checkpoints are made and saved by transformers itself (CLIP, SigLIP and MLCD towers,
a Qwen2 LM, asymmetric grid pinpoints); images cover the awkward cases. Logits at the last
position must agree within 1e-4 (fp32) and greedy decoding must produce the same tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import fovea

from hf_reference import load_hf


def _image(h: int, w: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + h * 7 + w)
    rgba = (rng.random((h, w, 4)) * 255).astype("uint8")
    image = Image.fromarray(rgba, "RGBA")
    return image if mode == "RGBA" else image.convert(mode)


AWKWARD = {
    "wide": [_image(20, 300)],
    "tall": [_image(300, 20)],
    "one-pixel": [_image(1, 1)],
    "huge": [_image(1500, 2300)],
    "grayscale": [_image(90, 130, "L")],
    "rgba": [_image(77, 61, "RGBA")],
    "square-ish": [_image(57, 57)],
    "several": [_image(40, 100), _image(100, 40, "L"), _image(64, 64, "RGBA")],
}


def _reference(hf, processor, text, images):
    ref = processor(images=images, text=text, return_tensors="pt")
    with torch.no_grad():
        logits = hf(**ref).logits[0, -1]
    return ref, logits


@pytest.mark.parametrize("kind", ["clip", "siglip", "mlcd"])
@pytest.mark.parametrize("case", list(AWKWARD))
def test_last_logits_match_transformers(hf_checkpoints, kind, case):
    directory = hf_checkpoints(kind)
    hf, processor = load_hf(directory)
    model = fovea.load(directory)
    images = AWKWARD[case]
    text = "".join("<image>\n" for _ in images) + "What is shown here?"
    ref, ref_logits = _reference(hf, processor, text, images)
    inputs = model.prepare(text, images=images)
    assert torch.equal(inputs["input_ids"], ref["input_ids"])
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    assert (logits - ref_logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("kind", ["clip", "siglip", "mlcd"])
def test_greedy_text_matches_transformers(hf_checkpoints, kind):
    directory = hf_checkpoints(kind)
    hf, processor = load_hf(directory)
    model = fovea.load(directory)
    images = [_image(45, 170), _image(120, 60)]
    text = "<image>\n<image>\nDescribe both."
    ref = processor(images=images, text=text, return_tensors="pt")
    eos = model.tokenizer.eos_token_id
    with torch.no_grad():
        out = hf.generate(**ref, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    expected = processor.tokenizer.decode(out[0, ref["input_ids"].shape[1] :], skip_special_tokens=True)
    assert model.generate(text, images=images, template=None, max_new_tokens=12) == expected


def test_multi_layer_selection_matches_transformers(hf_checkpoints):
    directory = hf_checkpoints("clip", layers=[-3, -2])
    hf, processor = load_hf(directory)
    model = fovea.load(directory)
    assert model.connector.projector[0].in_features == 2 * model.tower.width
    images = [_image(33, 90)]
    ref, ref_logits = _reference(hf, processor, "<image>\nHi", images)
    with torch.no_grad():
        logits = model(**model.prepare("<image>\nHi", images=images)).logits[0, -1]
    assert (logits - ref_logits).abs().max().item() < 1e-4


def test_new_key_layout_loads_the_same(hf_checkpoints, tmp_path):
    """transformers >= 4.52 module names (model.language_model.*, model.vision_tower.vision_model.*)."""
    import shutil

    from safetensors.torch import load_file, save_file

    source = hf_checkpoints("clip")
    renamed = {}
    for key, tensor in load_file(source / "model.safetensors").items():
        key = key.replace("language_model.model.", "model.language_model.").replace(
            "language_model.lm_head", "lm_head"
        )
        key = key.replace("vision_tower.", "model.vision_tower.vision_model.")
        key = key.replace("multi_modal_projector.", "model.multi_modal_projector.")
        renamed[key if key != "image_newline" else "model.image_newline"] = tensor
    for f in source.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, tmp_path / f.name)
    save_file(renamed, tmp_path / "model.safetensors")
    a, b = fovea.load(source), fovea.load(tmp_path)
    images = [_image(50, 80)]
    with torch.no_grad():
        la = a(**a.prepare("<image>\nHi", images=images)).logits
        lb = b(**b.prepare("<image>\nHi", images=images)).logits
    assert torch.equal(la, lb)
