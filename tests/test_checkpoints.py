"""fovea checkpoints: bit-exact round trips, sharding, and broken checkpoints that fail in one line."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import fovea
from fovea.errors import CheckpointError


def _inputs(model):
    image = Image.fromarray((np.random.default_rng(0).random((50, 90, 3)) * 255).astype("uint8"))
    return model.prepare("<image>\nWhat is this?", images=[image], template="qwen_1_5")


def _logits(model):
    with torch.no_grad():
        return model(**_inputs(model)).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model):
    single = tiny_model.save_pretrained(tmp_path_factory.mktemp("single"))
    sharded = tiny_model.save_pretrained(tmp_path_factory.mktemp("sharded"), max_shard_size=40_000)
    return single, sharded


def test_round_trip_is_bit_exact(saved, tiny_model):
    single, sharded = saved
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    reference = _logits(tiny_model)
    for directory in saved:
        loaded = fovea.load(directory)
        assert not loaded.training
        assert all(
            torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny_model.state_dict().values())
        )
        assert torch.equal(_logits(loaded), reference)


def test_dtype_option(saved):
    model = fovea.load(saved[0], dtype=torch.bfloat16)
    assert (
        model.dtype == torch.bfloat16
        and model.tower.model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    )


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_shard(saved, tmp_path):
    broken = _copy(saved[1], tmp_path / "ck")
    victim = sorted(broken.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"{victim.name}: shard listed in .* is missing"):
        fovea.load(broken)


def test_truncated_safetensors(saved, tmp_path):
    broken = _copy(saved[0], tmp_path / "ck")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: unreadable safetensors file"):
        fovea.load(broken)


def test_unknown_tower_type(saved, tmp_path):
    broken = _copy(saved[0], tmp_path / "ck")
    raw = json.loads((broken / "config.json").read_text())
    raw["model"]["tower"]["hf_config"]["model_type"] = "sigclip_vision_model"
    (broken / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="config.json: .*sigclip_vision_model"):
        fovea.load(broken)


def test_mismatched_shapes(saved, tmp_path):
    broken = _copy(saved[0], tmp_path / "ck")
    raw = json.loads((broken / "config.json").read_text())
    raw["model"]["lm"]["intermediate_size"] = 96
    (broken / "config.json").write_text(json.dumps(raw))
    with pytest.raises(
        CheckpointError, match=r"tensor 'lm\.model\.layers\.0\.mlp\..*' has shape \[\d+, \d+\]"
    ):
        fovea.load(broken)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        fovea.load(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        fovea.load(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="unsupported checkpoint layout 'bert'"):
        fovea.load(tmp_path)


def test_hub_id_without_network_is_one_line():
    with pytest.raises(CheckpointError, match="not a local directory and not downloadable"):
        fovea.load("DeepGlint-AI/llava-mlcd-qwen2.5-7b")


@pytest.mark.parametrize("part", ["lm", "tower"])
@pytest.mark.parametrize("layers", [-1, "two", None, 0, 1, 3])
def test_num_hidden_layers_that_disagree_with_the_weights_are_one_line(saved, tmp_path, part, layers):
    broken = _copy(saved[0], tmp_path / "ck")
    raw = json.loads((broken / "config.json").read_text())
    (raw["model"]["lm"] if part == "lm" else raw["model"]["tower"]["hf_config"])["num_hidden_layers"] = layers
    (broken / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as caught:  # not transformers' StrictDataclass... errors
        fovea.load(broken)
    message = str(caught.value)
    assert "\n" not in message and str(broken) in message, message
    assert "num_hidden_layers" in message or "connector.layers" in message, message


def test_convert_of_a_checkpoint_whose_config_disagrees_is_one_line(saved, tmp_path, capsys):
    from fovea.cli import main

    broken = _copy(saved[0], tmp_path / "ck")
    raw = json.loads((broken / "config.json").read_text())
    raw["model"]["lm"]["num_hidden_layers"] = -1
    (broken / "config.json").write_text(json.dumps(raw))
    for to in ("hf", "fovea"):
        assert main(["convert", str(broken), str(tmp_path / f"out-{to}"), "--to", to]) == 2
        out, err = capsys.readouterr()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"{broken / 'config.json'}: " in err and "num_hidden_layers" in err


@pytest.mark.parametrize("layers", [3, 1, "two"])
def test_transformers_layout_whose_layer_count_disagrees_is_one_line(saved, tmp_path, capsys, layers):
    """transformers' own layout lists layer_types: a num_hidden_layers that disagrees made transformers
    raise StrictDataclassClassValidationError from deep inside AutoTokenizer (a 41-line traceback)."""
    from fovea.checkpoints.export import convert
    from fovea.cli import main

    hf = tmp_path / "hf"
    convert(saved[0], hf)
    raw = json.loads((hf / "config.json").read_text())
    raw["text_config"]["num_hidden_layers"] = layers
    (hf / "config.json").write_text(json.dumps(raw))
    with pytest.raises(
        CheckpointError, match=rf"^{re.escape(str(hf / 'config.json'))}: text_config: .*num_hidden_layers"
    ):
        fovea.load(hf)
    assert main(["convert", str(hf), str(tmp_path / "back"), "--to", "fovea"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "text_config" in err


def _fovea_layout(path):
    from fovea.tiny import tiny_vlm

    return tiny_vlm().save_pretrained(path)


def _llava_next_layout(path):
    from hf_reference import make_hf_llava_next

    return make_hf_llava_next(path)


def _original_layout(path):
    from llava_layouts import write_original
    from original_reference import PINPOINTS, reference_next, tower_dir, vision_fields

    tower = tower_dir(path / "tower", "clip", vision_fields("clip"))
    reference, _ = reference_next("clip", tower)
    return write_original(reference, path / "ck", tower_dir=path / "tower", pinpoints_hw=PINPOINTS)


def _onevision_layout(path):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from fovea.tiny import tiny_tokenizer

    from original_reference import tower_dir, vision_fields
    from released_lm import llava_text

    tower = tower_dir(path / "tower", "siglip", vision_fields("siglip"))
    tokenizer = tiny_tokenizer()
    config = LlavaOnevisionConfig(
        vision_config={**tower.config.to_dict(), "vision_use_head": False},
        **llava_text(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=[[56, 56], [56, 112]],
    )
    LlavaOnevisionForConditionalGeneration(config).save_pretrained(path / "ck")
    tokenizer.save_pretrained(path / "ck")
    return path / "ck"


LAYOUT_EXAMPLES = {
    "fovea": _fovea_layout,
    "llava_next": _llava_next_layout,
    "llava_onevision": _onevision_layout,
    "llava_original": _original_layout,
}


def test_every_registered_layout_has_an_example_here():
    from fovea.checkpoints.layouts import LAYOUTS

    assert sorted(LAYOUT_EXAMPLES) == LAYOUTS.names()


@pytest.mark.parametrize("name", sorted(LAYOUT_EXAMPLES))
def test_each_layout_is_recognised_by_itself_alone_and_loads(tmp_path, name):
    from fovea.checkpoints.layouts import LAYOUTS

    directory = LAYOUT_EXAMPLES[name](tmp_path)
    raw = json.loads((directory / "config.json").read_text())
    assert [n for n in LAYOUTS if LAYOUTS.get(n).detect(raw)] == [name]
    model = fovea.load(directory)
    assert (
        model.generate("Hi", images=[Image.new("RGB", (40, 60))], template=None, max_new_tokens=2) is not None
    )
