"""Strict configs: unknown keys suggest the closest name, types are checked, overrides apply."""

from __future__ import annotations

import pytest

from fovea.config import apply_overrides, from_dict, load_yaml, to_dict
from fovea.errors import ConfigError
from fovea.model.config import VLMConfig
from fovea.tiny import tiny_vlm


def _config_dict() -> dict:
    return to_dict(tiny_vlm().config)


def test_round_trip():
    data = _config_dict()
    assert to_dict(from_dict(VLMConfig, data)) == data


def test_unknown_key_names_the_path_and_suggests():
    data = _config_dict()
    data["connector"]["projecter"] = "linear"
    with pytest.raises(ConfigError, match=r"'connector.projecter'.*did you mean 'projector'"):
        from_dict(VLMConfig, data)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("image.size=big", r"image.size: expected int"),
        ("connector.layers=3", r"connector.layers: expected a list"),
        ("image.mode=anyres_max_x", r"anyres_max_N"),
        ("template=chatml", r"unknown template 'chatml'"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(VLMConfig, apply_overrides(_config_dict(), [override]))


def test_dotted_overrides_parse_yaml_values():
    data = apply_overrides(
        _config_dict(), ["--connector.layers=[-3, -2]", "image.mode=anyres_max_4", "template=null"]
    )
    config = from_dict(VLMConfig, data)
    assert (
        config.connector.layers == [-3, -2]
        and config.image.mode == "anyres_max_4"
        and config.template is None
    )


def test_missing_required_key():
    data = _config_dict()
    del data["image_token_id"]
    with pytest.raises(ConfigError, match="missing required config key 'image_token_id'"):
        from_dict(VLMConfig, data)


def test_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_yaml(bad)
