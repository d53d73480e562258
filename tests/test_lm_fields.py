"""No language-model field is lost, in any layout fovea reads or writes, on any LM type.

Released LLaVA checkpoints keep the LM's fields at the top level of config.json in the spelling of
the transformers they were trained with (``rope_theta``, ``rope_scaling``). fovea once kept only the
keys the installed config class printed, and transformers 5 prints ``rope_parameters`` instead: the
base was dropped and Qwen2.5 ran at 10,000 instead of 1e6, with no error. Here every LM type has
every forward-relevant field away from its default (tests/released_lm.py); each layout must bring
each field to fovea's LM config by name, and give transformers' own logits and greedy text.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlavaNextForConditionalGeneration

import fovea
from fovea.checkpoints.export import convert
from fovea.model.lm_config import LLAVA_FIELDS, lm_fields

from llava_layouts import write_original
from original_reference import PINPOINTS, compare, reference_next, sample_images, tower_dir, vision_fields
from released_lm import RELEASED, assert_fields_reach, released_lm_fields

LAYOUT_TYPES = {"qwen2": "llava_qwen", "llama": "llava_llama", "mistral": "llava_mistral"}


def _original(tmp_path, kind: str):
    tower = tower_dir(tmp_path / "tower", "clip", vision_fields("clip"))
    reference, processor = reference_next("clip", tower, lm_type=kind)
    ck = write_original(
        reference,
        tmp_path / "ck",
        tower_dir=tmp_path / "tower",
        pinpoints_hw=PINPOINTS,
        model_type=LAYOUT_TYPES[kind],
    )
    return reference, processor, ck


def _as_llava_next(tmp_path, reference, processor, original):
    reference.save_pretrained(tmp_path / "hf")
    processor.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _as_fovea(tmp_path, reference, processor, original):
    convert(original, tmp_path / "fv", to="fovea")
    return tmp_path / "fv"


LAYOUTS = {
    "original": lambda tmp_path, reference, processor, original: original,
    "llava_next": _as_llava_next,
    "fovea": _as_fovea,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", list(RELEASED))
def test_every_layout_keeps_every_lm_field(tmp_path, kind, layout):
    reference, processor, original = _original(tmp_path, kind)
    raw = json.loads((original / "config.json").read_text())
    assert "rope_theta" in raw and "rope_parameters" not in raw  # written as released
    ours = fovea.load(LAYOUTS[layout](tmp_path, reference, processor, original))
    assert ours.lm.config.model_type == kind
    assert_fields_reach(ours.lm.config, released_lm_fields(len(processor.tokenizer), kind))
    compare(ours, reference, processor)


@pytest.mark.parametrize("kind", list(RELEASED))
def test_export_to_transformers_writes_every_field_back(tmp_path, kind):
    """`--to hf` of an original checkpoint: transformers' own LlavaNext reads the fields back and
    gives the reference's logits."""
    reference, processor, original = _original(tmp_path, kind)
    convert(original, tmp_path / "hf", to="hf")
    exported = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert_fields_reach(exported.config.text_config, released_lm_fields(len(processor.tokenizer), kind))
    ref = processor(images=sample_images(), text="<image>\n<image>\nWhat differs?", return_tensors="pt")
    with torch.no_grad():
        expected = reference(**ref).logits[0, -1]
        got = exported(**ref).logits[0, -1]
    assert (got - expected).abs().max().item() < 1e-4


def test_a_transformers_checkpoint_ties_its_head_as_transformers_does(tmp_path):
    """transformers 5 ties a LlavaNext head by the wrapper's ``tie_word_embeddings``; a text_config
    that says True under a wrapper that says False keeps its own head, in fovea as in transformers."""
    reference, processor, _ = _original(tmp_path, "qwen2")
    reference.config.tie_word_embeddings = False
    with torch.no_grad():  # an untied head of its own
        reference.lm_head.weight = torch.nn.Parameter(torch.randn_like(reference.lm_head.weight) * 0.2)
    reference.save_pretrained(tmp_path / "hf")
    processor.save_pretrained(tmp_path / "hf")
    again = LlavaNextForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert again.config.text_config.tie_word_embeddings and not again.config.tie_word_embeddings
    ours = fovea.load(tmp_path / "hf")
    assert not ours.lm.config.tie_word_embeddings
    compare(ours, again, processor)


@pytest.mark.parametrize("kind", list(RELEASED))
def test_llava_fields_are_dropped_and_nothing_else(kind):
    """Only LLaVA's own fields leave; an LM field this transformers does not know stays (as an
    attribute, as transformers keeps it), so a release that adds one loses nothing either."""
    raw = {
        **released_lm_fields(320, kind),
        "model_type": LAYOUT_TYPES[kind],
        "architectures": ["LlavaQwenForCausalLM"],
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_spatial_pool_mode": "bilinear",
        **{name: 1 for name in LLAVA_FIELDS},
        "a_field_of_a_future_release": 7,
    }
    fields = lm_fields(raw, kind)
    assert fields["model_type"] == kind
    assert not [k for k in fields if k.startswith("mm_") or k in LLAVA_FIELDS]
    assert fields["a_field_of_a_future_release"] == 7
    assert fields["rope_parameters"]["rope_theta"] == RELEASED[kind]["rope_theta"]


def test_original_layouts_load_quietly_and_say_their_inferred_template(tmp_path, capfd):
    """chat, convert and eval on an original layout print nothing from transformers (it once warned
    of "a model of type `llava_qwen`" on every load); chat's first line names the inferred template."""
    from fovea.cli import main

    _, _, ck = _original(tmp_path, "qwen2")
    capfd.readouterr()
    assert main(["chat", "--model", str(ck), "--prompt", "Hi", "--max-new-tokens", "2"]) == 0
    err = capfd.readouterr().err
    assert err.splitlines()[0].startswith("template: qwen_1_5, inferred from the llava_qwen layout")
    assert main(["convert", str(ck), str(tmp_path / "fv"), "--to", "fovea"]) == 0
    eval_args = ["--tasks", "synth_colour", "--limit", "2", "--data-root", str(tmp_path / "data")]
    assert main(["eval", "--model", str(ck), "--out", str(tmp_path / "run"), "--quiet", *eval_args]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["template"] == "qwen_1_5" and run["template_origin"].startswith("inferred from the llava_qwen")
    err += capfd.readouterr().err
    assert "transformers" not in err.lower(), err
