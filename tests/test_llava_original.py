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
    Qwen2ForCausalLM,
)

import fovea
from fovea.errors import CheckpointError
from fovea.imaging.processor import CLIP_MEAN, CLIP_STD
from fovea.tiny import tiny_tokenizer

from llava_layouts import original_key, write_original
from original_reference import (
    PINPOINTS,
    compare,
    randomise,
    reference_llava,
    reference_next,
    sample_images,
    tower_dir,
    vision_fields,
)
from released_lm import llava_text


@pytest.mark.parametrize("kind", ["clip", "mlcd", "siglip"])
def test_anyres_checkpoint_with_tower_inside(tmp_path, kind):
    tower = tower_dir(tmp_path / "tower", kind, vision_fields(kind))
    reference, processor = reference_next(kind, tower)
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
    compare(ours, reference, processor)


def test_tower_weights_from_the_tower_directory(tmp_path):
    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, processor = reference_next("clip", tower)
    write_original(
        reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS, tower_inside=False
    )
    compare(fovea.load(tmp_path / "ck"), reference, processor)


def test_range_pinpoints_and_slicefour(tmp_path):
    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip", layers=8))
    layers = list(range(9 // 4 - 2, 9, 9 // 4))  # LLaVA-NeXT slicefour with select layer -2
    reference, processor = reference_next(
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
    compare(ours, reference, processor)


def test_square_flat_checkpoint_matches_transformers_llava(tmp_path):
    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, processor = reference_llava(tower)
    write_original(
        reference,
        tmp_path / "ck",
        tower_dir=tmp_path / "tower",
        pinpoints_hw=None,
        aspect="square",
        merge="flat",
        tower_inside=False,
    )
    compare(fovea.load(tmp_path / "ck"), reference, processor)


def test_llama_lm_checkpoint(tmp_path):
    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, processor = reference_next("clip", tower, lm_type="llama")
    write_original(
        reference,
        tmp_path / "ck",
        tower_dir=tmp_path / "tower",
        pinpoints_hw=PINPOINTS,
        model_type="llava_llama",
    )
    ours = fovea.load(tmp_path / "ck")
    assert ours.lm.config.model_type == "llama"
    compare(ours, reference, processor)


def test_cls_patch_keeps_the_cls_token(tmp_path):
    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, processor = reference_llava(tower, strategy="full")
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
    compare(ours, reference, processor)


def test_max_length_counts_visual_tokens(tmp_path):
    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, _ = reference_next("clip", tower)
    write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    ours = fovea.load(tmp_path / "ck")
    assert ours.config.max_length == 8192
    ours.config.max_length = 40
    with pytest.raises(
        fovea.ConfigError,
        match=r"the prompt is \d+ tokens with its images, over the model's max_length of 40",
    ):
        ours.prepare("<image>\nHi", images=sample_images()[:1])


def test_stage1_projector_on_a_base_lm(tmp_path):
    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, processor = reference_llava(tower)
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
    compare(fovea.load(stage1, base=str(tmp_path / "base")), reference, processor)


def test_bad_original_configs_are_one_line(tmp_path):
    import json

    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, _ = reference_next("clip", tower)
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

    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, _ = reference_next("clip", tower)
    ck = write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    raw = json.loads((ck / "config.json").read_text())
    layers = raw["num_hidden_layers"]
    wrong = {**raw, "num_hidden_layers": layers + 1, "layer_types": ["full_attention"] * layers}
    (ck / "config.json").write_text(json.dumps(wrong))
    with pytest.raises(CheckpointError, match=r"ck/config\.json: `num_hidden_layers` \(\d+\) must be equal"):
        fovea.load(ck)


def test_tower_named_by_hub_id_builds_offline(tmp_path):
    """mm_vision_tower is a hub id with no network: its preset gives the architecture, the
    checkpoint holds the weights (the socket guard would fail any download)."""
    import json

    from fovea.towers.presets import TOWER_PRESETS, TowerPreset

    tower = tower_dir(tmp_path / "tower", "mlcd", vision_fields("mlcd"))
    hub_id = "fovea-tests/tiny-mlcd-vit-56"
    if hub_id not in [TOWER_PRESETS.get(n).hub_id for n in TOWER_PRESETS]:
        image = {
            "size": 56,
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
            "resample": "bicubic",
            "resize": "shortest_edge_crop",
        }
        TOWER_PRESETS.add(
            "test-tiny-mlcd-56", TowerPreset({"hf_config": vision_fields("mlcd")}, image, hub_id)
        )
    reference, processor = reference_next("mlcd", tower)
    ck = write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    raw = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**raw, "mm_vision_tower": hub_id}))
    compare(fovea.load(ck), reference, processor)


def test_onevision_style_checkpoint_matches_transformers_onevision(tmp_path):
    """llava + SigLIP (last block cut) + range pinpoints + anyres_max_N, as LLaVA-OneVision ships,
    against transformers' LlavaOnevision, which implements anyres_max itself. Its processor needs
    torchvision (absent here), so transformers' image processor makes the pixels and transformers'
    model checks our placeholder count (it raises when tokens and packed features differ)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tower = tower_dir(tmp_path / "tower", "siglip", vision_fields("siglip"))
    tokenizer = tiny_tokenizer()
    vision = {**tower.config.to_dict(), "num_hidden_layers": 2, "vision_use_head": False}
    pinpoints = [[h * 56, w * 56] for w in (1, 2, 3) for h in (1, 2, 3)]
    config = LlavaOnevisionConfig(
        vision_config=vision,
        **llava_text(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_1",
        image_grid_pinpoints=pinpoints,
    )
    reference = LlavaOnevisionForConditionalGeneration(config).eval()
    randomise(reference)
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


@pytest.mark.parametrize(
    ("layout", "kind", "llama3_tokens", "expected"),
    [
        ("llava_qwen", "qwen2", False, "qwen_1_5"),  # MLCD-LLaVA-NeXT, MLCD-Embodied, LLaVA-OV
        ("llava_llama", "llama", True, "llama3"),  # LLaVA-NeXT and vMLLM on Llama-3
        ("llava_llama", "llama", False, "vicuna_v1"),  # LLaVA-1.5, MMFuser, ConvLLaVA
        ("llava_mistral", "mistral", False, None),  # mistral_instruct: not a fovea template
    ],
)
def test_an_original_checkpoint_knows_its_template(layout, kind, llama3_tokens, expected):
    from fovea.checkpoints.llava_original import infer_template

    tokenizer = tiny_tokenizer(image_token=False)
    if llama3_tokens:
        tokenizer.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
    name, why = infer_template({"model_type": layout}, kind, tokenizer)
    assert name == expected and (why is None) == (expected is None)
    if why:
        assert why.startswith(f"inferred from the {layout} layout")


def test_the_inferred_template_is_the_default_and_template_overrides_it(tmp_path):
    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, _ = reference_next("clip", tower)
    ours = fovea.load(
        write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    )
    assert ours.chat_format().name == "qwen_1_5" and ours.template_note().startswith("template: qwen_1_5, ")
    assert ours.chat_format("vicuna_v1").name == "vicuna_v1" and ours.template_note("vicuna_v1") is None
    prompt = ours.prepare_chat([{"role": "user", "content": "Hi"}])["input_ids"][0]
    assert ours.tokenizer.decode(prompt).startswith("<|im_start|>system\nYou are a helpful assistant.")
