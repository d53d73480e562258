"""Vision towers: transformers vision backbones (and UNICOM's ViT) behind one contract, and presets."""

from .base import TOWER_FAMILIES, TowerConfig, TowerFamily, TowerOutput, VisionTower
from .presets import TOWER_PRESETS, TowerPreset, build_tower, resolve_tower
from .unicom import UnicomVisionConfig, UnicomVisionModel  # registers with transformers' Auto classes

__all__ = [
    "TOWER_FAMILIES",
    "TOWER_PRESETS",
    "TowerConfig",
    "TowerFamily",
    "TowerOutput",
    "TowerPreset",
    "UnicomVisionConfig",
    "UnicomVisionModel",
    "VisionTower",
    "build_tower",
    "resolve_tower",
]
