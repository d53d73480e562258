"""Projectors and the connector: shapes, LLaVA key names, multi-layer fusion, loud misuse."""

from __future__ import annotations

import pytest
import torch

from fovea.connectors import Connector, ConnectorConfig, build_projector
from fovea.connectors.projectors import PROJECTORS, projector_type
from fovea.errors import ConfigError
from fovea.towers import build_tower


@pytest.mark.parametrize(
    ("kind", "keys"),
    [
        ("linear", {"0.weight", "0.bias"}),
        ("mlp2x_gelu", {"0.weight", "0.bias", "2.weight", "2.bias"}),
        ("mlp3x_gelu", {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}),
    ],
)
def test_projector_layouts(kind, keys):
    proj = build_projector(kind, 8, 16)
    assert set(proj.state_dict()) == keys
    assert proj(torch.randn(2, 5, 8)).shape == (2, 5, 16)


@pytest.mark.parametrize("name", PROJECTORS.names())
def test_every_registered_projector_builds_from_its_example(name):
    kind = PROJECTORS.get(name).example
    assert projector_type(kind)[0] is PROJECTORS.get(name)
    assert build_projector(kind, 8, 8)(torch.randn(2, 5, 8)).shape == (2, 5, 8)


def test_identity_and_unknown():
    assert build_projector("identity", 8, 8)(torch.ones(1, 2, 8)).shape == (1, 2, 8)
    with pytest.raises(ConfigError, match="equal widths"):
        build_projector("identity", 8, 16)
    with pytest.raises(ConfigError, match="unknown projector"):
        build_projector("mlp2x_relu", 8, 16)


def _connector(tower_name: str, **kw) -> tuple:
    tower, image = build_tower(tower_name)
    cfg = ConnectorConfig(**kw)
    conn = Connector(cfg, levels=tower.feature_levels(), lm_width=48)
    return tower, conn, image["size"]


def test_multi_layer_concat_and_cls():
    tower, conn, size = _connector("clip-vit-l14-336-tiny", layers=[0, -2, -1])
    out = conn(tower(torch.randn(2, 3, size, size)), (size, size))
    assert conn.projector[0].in_features == 3 * tower.width
    assert out.shape == (2, 4, 48)  # CLS dropped
    tower, conn, size = _connector("clip-vit-l14-336-tiny", keep_cls=True)
    assert conn(tower(torch.randn(1, 3, size, size)), (size, size)).shape == (1, 5, 48)


def test_misuse_is_reported():
    with pytest.raises(ConfigError, match="no CLS"):
        _connector("siglip-so400m-384-tiny", keep_cls=True)
    with pytest.raises(ConfigError, match="outside the tower"):
        _connector("clip-vit-l14-336-tiny", layers=[7])
