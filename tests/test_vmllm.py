"""vMLLM trained from a recipe: both published stages on a tiny model (SigLIP-style: no projection,
the text tower as wide as the vision tower) train, the loss falls, only the named parts change (the
text tower never does), and the result loads with its text tokenizer and answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fovea
from fovea.config import from_dict, to_dict
from fovea.data.synthetic import generate
from fovea.errors import ConfigError
from fovea.tiny import tiny_text_tower
from fovea.train.loop import train
from fovea.train.recipe import Recipe, load_recipe

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, 48, seed=2)
    return out


def _recipe(root: Path, out: Path) -> Recipe:
    recipe = load_recipe(
        ROOT / "configs" / "tiny.yaml",
        [f"run.out_dir={out}", "run.progress=false", "run.log_every=1", "run.report_to=[]",
         f"stages.0.data={root / 'captions.json'}", "stages.0.max_steps=4",
         f"stages.1.data={root / 'qa.json'}", "stages.1.max_steps=6", "stages.1.batch_size=8"],
    )  # fmt: skip
    fields = to_dict(recipe)
    text, _ = tiny_text_tower("siglip_text_model", width=64)  # the tiny tower's width: P = D
    fields["model"]["connector"] = {
        "layers": [0, 1, 2, 3, -2],
        "fuser": {"type": "vmllm", "text_tower": text},
    }
    fields["stages"][0]["train"] = {"connector.fuser.enhance": 1e-3, "connector.projector": 1e-3}
    fields["stages"][1]["train"] = {"connector": 1e-3, "lm": 1e-3}
    return from_dict(Recipe, fields)


def _losses(out: Path, stage: str) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["stage"] == stage]


def test_both_stages_train_only_their_parts(data, tmp_path):
    final = train(_recipe(data, tmp_path))
    assert _losses(tmp_path, "finetune")[-1] < _losses(tmp_path, "finetune")[0]
    first = fovea.load(tmp_path / "stage-0-align" / "final")
    last = fovea.load(final)
    before, after = first.state_dict(), last.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("connector.fuser.enhance.") for k in changed) and any(
        k.startswith("lm.") for k in changed
    )
    assert not any(k.startswith(("connector.fuser.text.", "tower.")) for k in changed)  # frozen / not listed
    assert last.connector.fuser.tokenizer is not None
    answer = last.generate("What colour is the shape?", images=[data / "images/000000.png"], max_new_tokens=4)
    assert isinstance(answer, str)


def test_a_text_tower_narrower_than_the_vision_tower_needs_projection_dim():
    from fovea.connectors.vmllm import VMLLMConfig, VMLLMFuser

    text, _ = tiny_text_tower("siglip_text_model", width=16)
    with pytest.raises(ConfigError, match="without projection_dim"):
        VMLLMFuser(VMLLMConfig(text_tower=text), [64, 64, 64])


def test_a_tower_without_a_text_half_takes_one_from_text_from(tmp_path):
    """MLCD-style: the text tower and its text_projection come from `text_from`; the visual
    projection (that checkpoint's own is for another tower) stays the fuser's own random one."""
    from transformers import CLIPConfig, CLIPModel

    from fovea.connectors.vmllm import VMLLMConfig, VMLLMFuser

    text, tokenizer = tiny_text_tower("clip_text_model", width=16)
    clip = CLIPModel(CLIPConfig(text_config={k: v for k, v in text.items() if k != "model_type"},
                                vision_config={"hidden_size": 24, "patch_size": 8, "image_size": 16}, projection_dim=16))  # fmt: skip
    clip.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    config = VMLLMFuser.complete_config(
        VMLLMConfig(text_from=str(tmp_path), projection_dim=16, faithful=False), None
    )
    fuser = VMLLMFuser(config, [40, 40, 40])
    visual = fuser.projection["visual"].weight.clone()
    fuser.load_pretrained("unused: text_from wins")
    assert torch.equal(fuser.projection["text"].weight, clip.text_projection.weight)
    assert torch.equal(
        fuser.text.embeddings.token_embedding.weight, clip.text_model.embeddings.token_embedding.weight
    )
    assert torch.equal(fuser.projection["visual"].weight, visual) and fuser.tokenizer is not None
