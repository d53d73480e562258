"""ConvLLaVA's three stages on a tiny model: a four-stage ConvNeXt grown by a fifth stage, then
(1) stage 5 + projector, (2) stages 3-5 + projector + LM, (3) projector + LM. Each stage's loss falls
and exactly its parts change; the grown tower saves and reloads as a five-stage ConvNeXt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import fovea
from fovea.config import from_dict, to_dict
from fovea.data.synthetic import generate
from fovea.towers.presets import resolve_tower
from fovea.train.loop import train
from fovea.train.recipe import Recipe, load_recipe

ROOT = Path(__file__).parents[1]
STAGES = [
    ("projector", {"tower.stages.4": 2e-3, "connector": 2e-3}, ("tower.model.encoder.stages.4.", "connector.")),
    ("pretrain", {"tower.stages.2-4": 1e-3, "connector": 1e-3, "lm": 1e-3},
     ("tower.model.encoder.stages.2.", "tower.model.encoder.stages.3.", "tower.model.encoder.stages.4.", "connector.", "lm.")),
    ("instruct", {"connector": 1e-3, "lm": 1e-3}, ("connector.", "lm.")),
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tmp_path_factory.mktemp("synthetic")
    generate(data, 48, seed=3)
    out = tmp_path_factory.mktemp("convllava")
    fields = to_dict(load_recipe(ROOT / "configs" / "tiny.yaml"))
    tower = dict(resolve_tower("laion-convnext-large-512-tiny").tower["hf_config"])
    fields["model"] |= {"tower_config": tower, "tower_add_stage": {"depth": 1, "width": 48},
                        "connector": {"layers": [-1], "projector": "mlp2x_gelu"}}  # fmt: skip
    fields["model"]["image"] |= {"mode": "pad", "size": 128}
    base = fields["stages"][1]
    fields["stages"] = [
        {**base, "name": name, "train": parts, "data": str(data / "qa.json"), "max_steps": 6, "batch_size": 8}
        for name, parts, _ in STAGES
    ]
    fields["run"].update(out_dir=str(out), progress=False, log_every=1, report_to=[])
    recipe = from_dict(Recipe, fields)
    train(recipe)
    return out, recipe


def _initial(recipe: Recipe) -> dict:
    """The model as training built it (same seed, same construction)."""
    from accelerate.utils import set_seed

    from fovea.train.build import build_model

    set_seed(recipe.run.seed)
    return build_model(recipe.model).state_dict()


def _losses(out: Path, stage: str) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["stage"] == stage]


@pytest.mark.parametrize("index", range(len(STAGES)))
def test_each_stage_trains_only_its_parts(trained, index):
    out, recipe = trained
    name, _, prefixes = STAGES[index]
    losses = _losses(out, name)
    assert len(losses) == 6 and losses[-1] < losses[0]
    after = fovea.load(out / f"stage-{index}-{name}" / "final").state_dict()
    if index == 0:
        _check_grown(out)
        before = _initial(recipe)
    else:
        before = fovea.load(out / f"stage-{index - 1}-{STAGES[index - 1][0]}" / "final").state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(prefixes) for k in changed)
    assert {p for p in prefixes if any(k.startswith(p) for k in changed)} == set(prefixes)


def _check_grown(trained: Path) -> None:
    model = fovea.load(trained / "stage-0-projector" / "final")
    assert model.config.tower.hf_config["depths"] == [1, 1, 1, 1, 1]
    assert model.tower.patch_size == 64 and model.tower.width == 48
    assert model.token_grid() == (2, 2)  # a 128 px square: (128 / 64)^2 tokens
