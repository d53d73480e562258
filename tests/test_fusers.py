"""Every registered fuser, through the whole model: token counts known before running, gradients to
every trainable parameter, save -> load exact; and fusers' own configs, strictly checked."""

from __future__ import annotations

import pytest
import torch

import fovea
from fovea.config import from_dict, to_dict
from fovea.connectors.connector import ConnectorConfig
from fovea.connectors.fusers import FUSERS, FuserConfig, fuser_config
from fovea.errors import ConfigError
from fovea.train.parts import assign
from fuser_models import fuser_model, images, off_init


@pytest.mark.parametrize("name", list(FUSERS))
def test_token_counts_are_known_before_running(name):
    model = fuser_model(name)
    inputs = model.prepare("<image><image><image>\nWhat is it?", images=images())
    with torch.no_grad():
        packed = model.encode_images(inputs.images)
    for layout, tokens in zip(inputs["image_layouts"], packed):
        assert tokens.shape[0] == model.num_image_tokens(layout)
    placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert placeholders == sum(t.shape[0] for t in packed)


@pytest.mark.parametrize("name", list(FUSERS))
def test_a_gradient_reaches_every_trainable_connector_parameter(name):
    model = fuser_model(name).train()
    off_init(model)
    rates = assign(model, {"connector": 1e-3})
    inputs = model.prepare("<image>\nWhat is it?", images=images()[:1])
    model(**inputs).logits.float().pow(2).mean().backward()
    for param_name, param in model.named_parameters():
        if param_name in rates:
            assert param.grad is not None and param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", list(FUSERS))
def test_save_and_load_are_exact(name, tmp_path):
    model = fuser_model(name).eval()
    off_init(model)  # the fuser's weights must be saved, not only re-created by its init
    inputs = model.prepare("<image>\nWhat is it?", images=images()[:1])
    with torch.no_grad():
        before = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = fovea.load(tmp_path).eval()
    assert loaded.config.connector.fuser == model.config.connector.fuser
    with torch.no_grad():
        assert torch.equal(
            loaded(**loaded.prepare("<image>\nWhat is it?", images=images()[:1])).logits, before
        )


@pytest.mark.parametrize("name", list(FUSERS))
def test_each_fuser_owns_a_config_of_its_type(name):
    config = fuser_config(name)
    assert isinstance(config, FUSERS.get(name).config_class) and isinstance(config, FuserConfig)
    assert fuser_config(to_dict(config)) == config  # the stored mapping reads back the same


def test_a_type_name_and_a_mapping_are_the_same_config():
    a = from_dict(ConnectorConfig, {"fuser": "concat"})
    b = from_dict(ConnectorConfig, {"fuser": {"type": "concat"}})
    assert a == b and a.fuser == {"type": "concat"} and a.fuser_type == "concat"


@pytest.mark.parametrize(
    "fuser, message",
    [
        ("concatt", "unknown fuser 'concatt' \\(did you mean 'concat'\\?\\)"),
        ({"type": "concat", "heads": 4}, "unknown config key 'fuser.heads'"),
        (3, "fits none of"),
    ],
)
def test_a_bad_fuser_is_one_line_naming_it(fuser, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ConnectorConfig, {"fuser": fuser}, "model.connector")


def test_the_fuser_and_the_projector_train_at_their_own_rates():
    model = fuser_model("concat")
    rates = assign(model, {"connector": 1e-3, "connector.projector": 2e-5})
    projector = [n for n in rates if n.startswith("connector.projector.")]
    assert projector and all(rates[n] == 2e-5 for n in projector)
    assert not [n for n in rates if not n.startswith("connector.")]


def _recipes_with_a_tower_preset() -> list:
    import yaml

    root = __import__("pathlib").Path(__file__).parents[1] / "configs"
    return [p for p in sorted(root.glob("*.yaml")) if "tower" in yaml.safe_load(p.read_text())["model"]]


@pytest.mark.parametrize("path", _recipes_with_a_tower_preset(), ids=lambda p: p.name)
def test_every_recipes_connector_builds_on_its_real_tower(path):
    """The full-size tower on the meta device (no weights, no download) and the recipe's connector
    on it: the layers exist, the fuser's config fits the tower's widths, token counts are known."""
    from fovea.connectors.connector import Connector
    from fovea.towers.base import VisionTower
    from fovea.towers.convnext import add_stage
    from fovea.towers.presets import pretrained_source, resolve_tower
    from fovea.train.build import _complete_connector
    from fovea.train.recipe import load_recipe

    recipe = load_recipe(path)  # (tiny.yaml's tower_config model is built by tests/test_train.py)
    preset = resolve_tower(recipe.model.tower)
    config = _complete_connector(recipe.model.connector, pretrained_source(recipe.model.tower))
    with torch.device("meta"):
        tower = VisionTower(preset.tower_config())
        if recipe.model.tower_add_stage is not None:  # ConvLLaVA's fifth stage
            add_stage(tower, recipe.model.tower_add_stage.depth, recipe.model.tower_add_stage.width)
        connector = Connector(config, levels=tower.feature_levels(), lm_width=3584)
    size = recipe.model.image.get("size", preset.image["size"])
    rows, cols = connector.out_grid((size, size))
    assert rows * cols == (size // tower.patch_size) ** 2
