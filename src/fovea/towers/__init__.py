"""Vision towers: transformers vision backbones behind one contract, and named presets."""

from .base import TOWER_FAMILIES, TowerConfig, TowerFamily, TowerOutput, VisionTower
from .presets import TOWER_PRESETS, TowerPreset, build_tower, resolve_tower

__all__ = [
    "TOWER_FAMILIES",
    "TOWER_PRESETS",
    "TowerConfig",
    "TowerFamily",
    "TowerOutput",
    "TowerPreset",
    "VisionTower",
    "build_tower",
    "resolve_tower",
]
