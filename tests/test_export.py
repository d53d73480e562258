"""`fovea convert`: exports load in transformers and agree with fovea on the source.

Sources: fovea's tiny model (tokenizer with <image>) and an original LLaVA-NeXT checkpoint
(tokenizer without <image>, so the export adds it). Each export is loaded with transformers'
LlavaNextForConditionalGeneration + AutoProcessor; last-position logits (over the source
vocabulary) and greedy text must match fovea on the source, and the exported chat template must
render what fovea's template renders.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

import fovea
from fovea.checkpoints.export import convert
from fovea.cli import main
from fovea.config import from_dict, to_dict
from fovea.connectors.connector import ConnectorConfig
from fovea.errors import ConfigError
from fovea.tiny import tiny_vlm

from cli_checks import refused, snapshot
from llava_layouts import write_original
from original_reference import PINPOINTS, reference_next, tower_dir, vision_fields


def _images():
    rng = np.random.default_rng(9)
    return [Image.fromarray((rng.random(s + (3,)) * 255).astype("uint8")) for s in [(30, 70), (64, 40)]]


def _agree(source_model, export_dir, template):
    hf = LlavaNextForConditionalGeneration.from_pretrained(export_dir).eval()
    processor = AutoProcessor.from_pretrained(export_dir)
    images = _images()
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare."}],
        }
    ]
    if template:
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        assert text == source_model.render_prompt("<image>\n<image>\nCompare.", 2, template)
    else:
        text = "<image>\n<image>\nCompare."
    ref = processor(images=images, text=text, return_tensors="pt")
    vocab = source_model.lm.config.vocab_size
    with torch.no_grad():
        expected = hf(**ref).logits[0, -1, :vocab]
        got = source_model(
            **source_model.prepare("<image>\n<image>\nCompare.", images=images, template=template)
        )
    assert (got.logits[0, -1] - expected).abs().max().item() < 1e-4
    eos = processor.tokenizer.eos_token_id
    with torch.no_grad():
        out = hf.generate(**ref, max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    answer = processor.tokenizer.decode(out[0, ref["input_ids"].shape[1] :], skip_special_tokens=True)
    assert (
        source_model.generate(
            "<image>\n<image>\nCompare.", images=images, template=template, max_new_tokens=8
        )
        == answer
    )


def test_fovea_model_exports_to_transformers(tmp_path, capsys):
    model = tiny_vlm(grid_pinpoints=[[28, 56], [56, 84], [84, 28]], template="qwen_1_5")
    model.save_pretrained(tmp_path / "src")
    code = main(
        ["convert", str(tmp_path / "src"), str(tmp_path / "hf"), "--quiet", "--max-shard-size", "30KB"]
    )
    assert code == 0 and "shard(s)" in capsys.readouterr().out
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 1
    _agree(model, tmp_path / "hf", "qwen_1_5")


def test_original_checkpoint_exports_and_gains_an_image_token(tmp_path):
    tower = tower_dir(tmp_path / "tower", "mlcd", vision_fields("mlcd"))
    reference, _ = reference_next("mlcd", tower)
    source = write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    # The original vocabulary has exactly one spare row (like Qwen2.5's padding); drop it, so the
    # export must grow the vocabulary for <image>.
    report = convert(source, tmp_path / "hf")
    assert report.tensors > 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["image_token_index"] == 320 and config["image_grid_pinpoints"] == PINPOINTS
    _agree(fovea.load(source), tmp_path / "hf", None)


def test_vocabulary_without_a_free_row_grows(tmp_path):
    """Vicuna-style: the vocabulary is exactly the tokenizer's, so <image> needs a new row."""
    from transformers import LlavaNextConfig

    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, _ = reference_next("clip", tower)
    config = reference.config.to_dict()
    config["text_config"]["vocab_size"] = 320
    small = LlavaNextForConditionalGeneration(LlavaNextConfig(**config)).eval()
    small.load_state_dict(
        {k: v[:320] if v.shape[:1] == (321,) else v for k, v in reference.state_dict().items()}
    )
    source = write_original(small, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    convert(source, tmp_path / "hf")
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert exported["text_config"]["vocab_size"] == 384 and exported["image_token_index"] == 320
    hf = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    ours = fovea.load(source)
    images = _images()[:1]
    ref = processor(images=images, text="<image>\nHi", return_tensors="pt")
    with torch.no_grad():
        expected = hf(**ref).logits[0, -1]
        got = ours(**ours.prepare("<image>\nHi", images=images)).logits[0, -1]
    assert (got - expected[:320]).abs().max().item() < 1e-4
    assert torch.all(expected[320:] == 0)  # new output rows are zero: no existing logit moved


def test_round_trip_through_fovea_format(tmp_path):
    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, _ = reference_next("clip", tower)
    source = write_original(reference, tmp_path / "ck", tower_dir=tmp_path / "tower", pinpoints_hw=PINPOINTS)
    convert(source, tmp_path / "fv", to="fovea", dtype=torch.bfloat16)
    a, b = fovea.load(source, dtype=torch.bfloat16), fovea.load(tmp_path / "fv")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"projector": "linear"}, "projector 'linear'"),
        ({"mode": "square"}, "image mode 'square'"),
        ({"fuser": {"type": "mmfuser"}, "layers": [0, 1, -2]}, "fuser 'mmfuser'"),
    ],
)
def test_inexpressible_exports_are_refused_by_name(tmp_path, change, message, capsys):
    from fovea.model.vlm import VisionLanguageModel

    model = tiny_vlm(mode=change.get("mode", "anyres"))
    if "projector" in change or "fuser" in change:
        fields = {k: v for k, v in change.items() if k != "mode"}
        model.config.connector = from_dict(ConnectorConfig, {**to_dict(model.config.connector), **fields})
        model = VisionLanguageModel(model.config, model.tokenizer)
    model.save_pretrained(tmp_path / "src")
    with pytest.raises(ConfigError, match=message):
        convert(tmp_path / "src", tmp_path / "hf")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "hf2"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "hf").exists() and not (tmp_path / "hf.partial").exists()


# -- what convert may delete or overwrite ------------------------------------------------------


def _refused(argv, capsys, *named):
    err = refused(["convert", *argv, "--quiet"], capsys)
    assert all(str(n) in err for n in named), err
    return err


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    return tiny_vlm().save_pretrained(tmp_path_factory.mktemp("convert") / "src")


def _workspace(tmp_path, tiny_source):
    """tmp/work/src (a checkpoint) beside tmp/work/notes.txt (a file that is not fovea's)."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(tiny_source, work / "src")
    (work / "notes.txt").write_text("mine, not fovea's")
    return work


@pytest.mark.parametrize(
    ("dest", "flags", "relation"),
    [
        ("work", ["--overwrite"], "contains"),  # the source's parent: once deleted it and notes.txt
        ("work/src", ["--overwrite"], "is"),
        ("work/src/hf", [], "lies inside"),
    ],
)
def test_a_destination_overlapping_the_source_is_refused(
    tmp_path, tiny_source, capsys, dest, flags, relation
):
    work = _workspace(tmp_path, tiny_source)
    before = snapshot(tmp_path)
    err = _refused([work / "src", tmp_path / dest, *flags], capsys, tmp_path / dest)
    assert f"{relation} the source" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_a_partial_directory_fovea_did_not_mark_is_left_alone(tmp_path, tiny_source, capsys, flags):
    (tmp_path / "hf.partial").mkdir()
    (tmp_path / "hf.partial" / "mine.txt").write_text("not fovea's")
    before = snapshot(tmp_path)
    _refused([tiny_source, tmp_path / "hf", *flags], capsys, tmp_path / "hf.partial")
    assert snapshot(tmp_path) == before and not (tmp_path / "hf").exists()


def test_a_partial_directory_fovea_left_behind_is_replaced(tmp_path, tiny_source):
    from fovea.checkpoints.export import PARTIAL_MARKER

    (tmp_path / "hf.partial").mkdir()
    (tmp_path / "hf.partial" / PARTIAL_MARKER).write_text("")
    (tmp_path / "hf.partial" / "shard-00001.safetensors").write_bytes(b"torn")
    convert(tiny_source, tmp_path / "hf")
    assert not (tmp_path / "hf.partial").exists()
    assert not (tmp_path / "hf" / PARTIAL_MARKER).exists() and (tmp_path / "hf" / "config.json").is_file()


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
@pytest.mark.parametrize("dest", ["hf", "hf/inner"])  # DST a file, or a path under a file
def test_a_file_as_destination_is_refused(tmp_path, tiny_source, capsys, flags, dest):
    (tmp_path / "hf").write_text("a file, not a directory")
    before = snapshot(tmp_path)
    _refused([tiny_source, tmp_path / dest, *flags], capsys, tmp_path / "hf")
    assert snapshot(tmp_path) == before and not (tmp_path / "hf.partial").exists()


@pytest.mark.parametrize(
    "contents",
    [
        {"notes.txt": "mine"},
        {"config.json": '{"learning_rate": 0.1}', "notes.txt": "mine"},  # a config, not a model's
        {"config.json": '{"model_type": "llava_next"}', "runs/log.txt": "mine"},  # holds folders
    ],
)
def test_overwrite_never_deletes_what_is_not_a_checkpoint(tmp_path, tiny_source, capsys, contents):
    for name, text in contents.items():
        (tmp_path / "hf" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "hf" / name).write_text(text)
    before = snapshot(tmp_path)
    _refused([tiny_source, tmp_path / "hf", "--overwrite"], capsys, tmp_path / "hf")
    assert snapshot(tmp_path) == before and not (tmp_path / "hf.partial").exists()


def test_overwrite_replaces_an_earlier_export(tmp_path, tiny_source, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    convert(tiny_source, tmp_path / "hf")
    (tmp_path / "hf" / "stale.txt").write_text("from an old export")
    argv = ["convert", str(tiny_source), str(tmp_path / "hf"), "--quiet"]
    _refused(argv[1:3], capsys, tmp_path / "hf")  # not empty, no --overwrite
    assert main([*argv, "--overwrite"]) == 0
    assert not (tmp_path / "hf" / "stale.txt").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "notes.txt"]
