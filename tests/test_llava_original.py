"""Original LLaVA-NeXT layout: fovea.load equals transformers on the same weights in its layout.

Each case builds a tiny transformers model (the reference), writes the *same* weights in the
original LLaVA-NeXT layout (tests/llava_layouts.py), loads that with fovea and compares
last-position logits (1e-4, fp32) and greedy text. The pinpoints are asymmetric, so reading the
original (width, height) lists the transformers way would change the grids and fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
    Qwen2ForCausalLM,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

import fovea
from fovea.errors import CheckpointError
from fovea.imaging.processor import CLIP_MEAN, CLIP_STD
from fovea.tiny import tiny_lm_config, tiny_tokenizer

from llava_layouts import original_key, write_original

PINPOINTS = [[56, 112], [112, 168], [168, 56], [56, 56]]  # (height, width)


def _vision(kind: str, layers: int = 3) -> dict:
    base = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "image_size": 56,
        "patch_size": 14,
    }
    types = {
        "clip": ("clip_vision_model", "quick_gelu"),
        "mlcd": ("mlcd_vision_model", "gelu"),
        "siglip": ("siglip_vision_model", "gelu_pytorch_tanh"),
    }
    model_type, act = types[kind]
    return {**base, "model_type": model_type, "hidden_act": act}


def _randomise(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)


def _tower_dir(path, kind: str, vision: dict):
    """A published-style tower directory: transformers weights + image processor config."""
    from transformers import AutoConfig

    tower = AutoModel.from_config(AutoConfig.for_model(**vision))
    _randomise(tower)
    tower.save_pretrained(path)
    if kind == "siglip":
        SiglipImageProcessorPil(size={"height": 56, "width": 56}).save_pretrained(path)
    else:
        CLIPImageProcessorPil(
            size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
        ).save_pretrained(path)
    return tower


def _reference_next(kind: str, tower, layers=-2, pinpoints=PINPOINTS, lm_type="qwen2"):
    """transformers LlavaNext whose tower is `tower` (SigLIP: run as LLaVA-NeXT does, last block cut)."""
    tokenizer = tiny_tokenizer()
    vision = tower.config.to_dict()
    siglip = kind == "siglip"
    if siglip:
        vision["num_hidden_layers"] -= 1
        layers = -1
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=tiny_lm_config(len(tokenizer), lm_type),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=layers,
        vision_feature_select_strategy="full" if siglip else "default",
        image_grid_pinpoints=pinpoints,
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    _randomise(model)
    own = model.model.vision_tower.state_dict()
    model.model.vision_tower.load_state_dict(
        {k: v for k, v in tower.state_dict().items() if k in own}, strict=False
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"height": 56, "width": 56} if siglip else {"shortest_edge": 56},
        crop_size={"height": 56, "width": 56},
        do_center_crop=not siglip,
        image_mean=[0.5] * 3 if siglip else CLIP_MEAN,
        image_std=[0.5] * 3 if siglip else CLIP_STD,
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=0 if siglip else 1,
    )
    return model, processor


def _images():
    rng = np.random.default_rng(5)
    return [Image.fromarray((rng.random(s + (3,)) * 255).astype("uint8")) for s in [(40, 150), (120, 50)]]


def _compare(ours, reference, processor, text="<image>\n<image>\nWhat differs?"):
    images = _images()
    ref = processor(images=images, text=text, return_tensors="pt")
    inputs = ours.prepare(text, images=images)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    ids = inputs["input_ids"].clone()
    ids[ids == ours.config.image_token_id] = image_id
    assert torch.equal(ids, ref["input_ids"])
    with torch.no_grad():
        expected = reference(**ref).logits[0, -1]
        got = ours(**inputs).logits[0, -1]
    assert (got - expected).abs().max().item() < 1e-4
    eos = processor.tokenizer.eos_token_id
    with torch.no_grad():
        out = reference.generate(
            **ref, max_new_tokens=10, do_sample=False, eos_token_id=eos, pad_token_id=eos
        )
    text_ref = processor.tokenizer.decode(out[0, ref["input_ids"].shape[1] :], skip_special_tokens=True)
    assert ours.generate(text, images=images, template=None, max_new_tokens=10) == text_ref


@pytest.mark.parametrize("kind", ["clip", "mlcd", "siglip"])
def test_anyres_checkpoint_with_tower_inside(tmp_path, kind):
    tower = _tower_dir(tmp_path / "tower", kind, _vision(kind))
    reference, processor = _reference_next(kind, tower)
    model_type = "llava" if kind == "mlcd" else "llava_qwen"  # "llava" as edited for serving, + architectures
    write_original(
        reference,
        tmp_path / "ck",
        tower_dir=tmp_path / "tower",
        pinpoints_hw=PINPOINTS,
        model_type=model_type,
    )
    ours = fovea.load(tmp_path / "ck")
    assert ours.config.image_token_id == -200
    assert ours.config.image.pinpoints == [tuple(p) for p in PINPOINTS]
    _compare(ours, reference, processor)


def test_tower_weights_from_the_tower_directory(tmp_path):
    tower = _tower_dir(tmp_path / "tower", "clip", _vision("clip"))
    reference, processor = _reference_next("clip", tower)
    write_original(
        reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS, tower_inside=False
    )
    _compare(fovea.load(tmp_path / "ck"), reference, processor)


def test_range_pinpoints_and_slicefour(tmp_path):
    tower = _tower_dir(tmp_path / "tower", "clip", _vision("clip", layers=8))
    layers = list(range(9 // 4 - 2, 9, 9 // 4))  # LLaVA-NeXT slicefour with select layer -2
    reference, processor = _reference_next(
        "clip", tower, layers=layers, pinpoints=[[h * 56, w * 56] for w in (1, 2) for h in (1, 2, 3)]
    )
    write_original(
        reference,
        tmp_path / "ck",
        tower_dir=tmp_path / "tower",
        pinpoints_hw="(1x1),...,(2x3)",
        select_feature="slicefour_patch",
    )
    ours = fovea.load(tmp_path / "ck")
    assert ours.config.connector.layers == layers
    _compare(ours, reference, processor)


def _reference_llava(tower, strategy="default"):
    """transformers Llava (LLaVA-1.5 style: square crop, flat tokens, no newline)."""
    tokenizer = tiny_tokenizer()
    config = LlavaConfig(
        vision_config=tower.config.to_dict(),
        text_config=tiny_lm_config(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy=strategy,
    )
    model = LlavaForConditionalGeneration(config).eval()
    _randomise(model)
    model.model.vision_tower.load_state_dict(tower.state_dict())
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1,
    )
    return model, processor


def test_square_flat_checkpoint_matches_transformers_llava(tmp_path):
    tower = _tower_dir(tmp_path / "tower", "clip", _vision("clip"))
    reference, processor = _reference_llava(tower)
    write_original(
        reference,
        tmp_path / "ck",
        tower_dir=tmp_path / "tower",
        pinpoints_hw=None,
        aspect="square",
        merge="flat",
        tower_inside=False,
    )
    _compare(fovea.load(tmp_path / "ck"), reference, processor)


def test_llama_lm_checkpoint(tmp_path):
    tower = _tower_dir(tmp_path / "tower", "clip", _vision("clip"))
    reference, processor = _reference_next("clip", tower, lm_type="llama")
    write_original(
        reference,
        tmp_path / "ck",
        tower_dir=tmp_path / "tower",
        pinpoints_hw=PINPOINTS,
        model_type="llava_llama",
    )
    ours = fovea.load(tmp_path / "ck")
    assert ours.lm.config.model_type == "llama"
    _compare(ours, reference, processor)


def test_cls_patch_keeps_the_cls_token(tmp_path):
    tower = _tower_dir(tmp_path / "tower", "clip", _vision("clip"))
    reference, processor = _reference_llava(tower, strategy="full")
    write_original(
        reference,
        tmp_path / "ck",
        tower_dir=tmp_path / "tower",
        pinpoints_hw=None,
        aspect="square",
        merge="flat",
        select_feature="cls_patch",
        tower_inside=False,
    )
    ours = fovea.load(tmp_path / "ck")
    assert ours.config.connector.keep_cls
    _compare(ours, reference, processor)


def test_max_length_counts_visual_tokens(tmp_path):
    tower = _tower_dir(tmp_path / "tower", "clip", _vision("clip"))
    reference, _ = _reference_next("clip", tower)
    write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    ours = fovea.load(tmp_path / "ck")
    assert ours.config.max_length == 8192
    ours.config.max_length = 40
    with pytest.raises(
        fovea.ConfigError,
        match=r"the prompt is \d+ tokens with its images, over the model's max_length of 40",
    ):
        ours.prepare("<image>\nHi", images=_images()[:1])


def test_stage1_projector_on_a_base_lm(tmp_path):
    tower = _tower_dir(tmp_path / "tower", "clip", _vision("clip"))
    reference, processor = _reference_llava(tower)
    base = Qwen2ForCausalLM(reference.config.text_config)
    base.model.load_state_dict(reference.model.language_model.state_dict())
    base.lm_head.load_state_dict(reference.lm_head.state_dict())
    base.save_pretrained(tmp_path / "base")
    tiny_tokenizer(image_token=False).save_pretrained(tmp_path / "base")
    stage1 = tmp_path / "stage1"
    write_original(
        reference,
        stage1,
        tower_dir=tmp_path / "tower",
        pinpoints_hw=None,
        aspect="square",
        merge="flat",
        tower_inside=False,
    )
    for f in stage1.glob("model*"):
        f.unlink()
    for f in stage1.glob("tokenizer*"):
        f.unlink()
    projector = {
        original_key(f"multi_modal_projector.{k}"): v
        for k, v in reference.model.multi_modal_projector.state_dict().items()
    }
    torch.save(projector, stage1 / "mm_projector.bin")
    _compare(fovea.load(stage1, base=str(tmp_path / "base")), reference, processor)


def test_bad_original_configs_are_one_line(tmp_path):
    import json

    tower = _tower_dir(tmp_path / "tower", "clip", _vision("clip"))
    reference, _ = _reference_next("clip", tower)
    ck = write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    raw = json.loads((ck / "config.json").read_text())
    for field, value, message in [
        ("mm_vision_tower", "someone/unknown-tower", "neither a known tower nor a local directory"),
        ("mm_projector_type", "pooler", "unsupported mm_projector_type 'pooler'"),
        ("mm_patch_merge_type", "spatial_unpad_nobase", "unsupported mm_patch_merge_type"),
        ("image_aspect_ratio", "highres", "unknown image mode 'highres'"),
    ]:
        (ck / "config.json").write_text(json.dumps({**raw, field: value}))
        with pytest.raises(CheckpointError, match=message):
            fovea.load(ck)


def test_layer_count_that_disagrees_with_layer_types_is_one_line(tmp_path):
    """AutoTokenizer reads config.json too; transformers' StrictDataclass error there was a traceback."""
    import json

    tower = _tower_dir(tmp_path / "tower", "clip", _vision("clip"))
    reference, _ = _reference_next("clip", tower)
    ck = write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    raw = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**raw, "num_hidden_layers": raw["num_hidden_layers"] + 1}))
    with pytest.raises(CheckpointError, match=r"ck/config\.json: `num_hidden_layers` \(\d+\) must be equal"):
        fovea.load(ck)


def test_tower_named_by_hub_id_builds_offline(tmp_path):
    """mm_vision_tower is a hub id with no network: its preset gives the architecture, the
    checkpoint holds the weights (the socket guard would fail any download)."""
    import json

    from fovea.towers.presets import TOWER_PRESETS, TowerPreset

    tower = _tower_dir(tmp_path / "tower", "mlcd", _vision("mlcd"))
    hub_id = "fovea-tests/tiny-mlcd-vit-56"
    if hub_id not in [TOWER_PRESETS.get(n).hub_id for n in TOWER_PRESETS]:
        image = {
            "size": 56,
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
            "resample": "bicubic",
            "resize": "shortest_edge_crop",
        }
        TOWER_PRESETS.add("test-tiny-mlcd-56", TowerPreset({"hf_config": _vision("mlcd")}, image, hub_id))
    reference, processor = _reference_next("mlcd", tower)
    ck = write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    raw = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**raw, "mm_vision_tower": hub_id}))
    _compare(fovea.load(ck), reference, processor)


def test_onevision_style_checkpoint_matches_transformers_onevision(tmp_path):
    """llava + SigLIP (last block cut) + range pinpoints + anyres_max_N, as LLaVA-OneVision ships,
    against transformers' LlavaOnevision, which implements anyres_max itself. Its processor needs
    torchvision (absent here), so transformers' image processor makes the pixels and transformers'
    model checks our placeholder count (it raises when tokens and packed features differ)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tower = _tower_dir(tmp_path / "tower", "siglip", _vision("siglip"))
    tokenizer = tiny_tokenizer()
    vision = {**tower.config.to_dict(), "num_hidden_layers": 2, "vision_use_head": False}
    pinpoints = [[h * 56, w * 56] for w in (1, 2, 3) for h in (1, 2, 3)]
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=tiny_lm_config(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_1",
        image_grid_pinpoints=pinpoints,
    )
    reference = LlavaOnevisionForConditionalGeneration(config).eval()
    _randomise(reference)
    own = reference.model.vision_tower.state_dict()
    reference.model.vision_tower.load_state_dict({k: v for k, v in tower.state_dict().items() if k in own})
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 56, "width": 56},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
        image_grid_pinpoints=pinpoints,
    )
    ck = write_original(
        reference,
        tmp_path / "ck",
        tower_dir=tmp_path / "tower",
        pinpoints_hw="(1x1),...,(3x3)",
        aspect="anyres_max_1",
        model_type="llava",
    )
    ours = fovea.load(ck)
    image = Image.fromarray((np.random.default_rng(3).random((150, 170, 3)) * 255).astype("uint8"))
    pixels = image_processor(images=[image], return_tensors="pt")
    inputs = ours.prepare("<image>\nWhat is it?", images=[image])
    n = inputs["pixel_values"].shape[0]
    assert (inputs["pixel_values"] - pixels["pixel_values"][0, :n]).abs().max() < 1e-5
    ids = inputs["input_ids"].clone()
    ids[ids == -200] = tokenizer.convert_tokens_to_ids("<image>")
    with torch.no_grad():
        expected = reference(
            input_ids=ids,
            pixel_values=pixels["pixel_values"],
            image_sizes=pixels["image_sizes"],
            batch_num_images=torch.tensor([1]),
        ).logits[0, -1]
        assert (ours(**inputs).logits[0, -1] - expected).abs().max().item() < 1e-4
    full = ours.num_image_tokens(ours.processor.layout((150, 170), "anyres"))
    assert full > ours.num_image_tokens(inputs["image_layouts"][0])  # anyres_max_1 did shrink the grid
