"""Named towers: the architecture and preprocessing facts of the published vision encoders.

A preset is architecture + preprocessing + where the weights live; building one never downloads
anything (``build_tower(name)`` gives random weights; ``build_tower(name, pretrained=True)`` loads
them). Every preset has a ``-tiny`` twin of the same type and preprocessing, a few layers wide, for
tests. Facts: the hub ``config.json`` / ``preprocessor_config.json`` of each checkpoint; for
UNICOM, whose weights are GitHub release files, its ``vision_transformer.py`` (see docs/towers.md
for sources).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..hub import resolve_directory
from ..imaging.processor import CLIP_MEAN, CLIP_STD
from ..registry import Registry
from .base import TowerConfig, VisionTower


@dataclass(frozen=True)
class TowerPreset:
    tower: dict
    """TowerConfig fields (``hf_config`` with ``model_type``, ...)."""
    image: dict
    """ImageConfig defaults: size, mean, std, resample, resize."""
    hub_id: str | None = None
    weights_url: str | None = None
    """Where published weights that are a file, not a hub repo, live (pass it as ``weights=``)."""

    def tower_config(self) -> TowerConfig:
        return TowerConfig(**{**self.tower, "weights": self.hub_id})


TOWER_PRESETS: Registry[TowerPreset] = Registry("tower preset")

_CLIP_IMAGE = {"mean": CLIP_MEAN, "std": CLIP_STD, "resample": "bicubic", "resize": "shortest_edge_crop"}
_SIGLIP_IMAGE = {"mean": [0.5] * 3, "std": [0.5] * 3, "resample": "bicubic", "resize": "squash"}


def _vit(
    model_type: str, width: int, mlp: int, layers: int, heads: int, image: int, act: str, eps: float
) -> dict:
    return {
        "model_type": model_type,
        "hidden_size": width,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "patch_size": 14,
        "image_size": image,
        "hidden_act": act,
        "layer_norm_eps": eps,
    }


def _add(name: str, hub_id: str, hf: dict, image: dict, help: str) -> None:
    size = hf["image_size"]
    TOWER_PRESETS.add(name, TowerPreset({"hf_config": hf}, {**image, "size": size}, hub_id), help)
    # The tiny twin: same type, activation and preprocessing; 2 layers of width 32 at 28 px.
    tiny = {
        **hf,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    tiny["image_size"] = 28
    TOWER_PRESETS.add(f"{name}-tiny", TowerPreset({"hf_config": tiny}, {**image, "size": 28}), f"tiny {help}")


_add(
    "clip-vit-l14-336",
    "openai/clip-vit-large-patch14-336",
    _vit("clip_vision_model", 1024, 4096, 24, 16, 336, "quick_gelu", 1e-5),
    _CLIP_IMAGE,
    "OpenAI CLIP ViT-L/14 at 336 px (576 patches + CLS)",
)
_add(
    "siglip-so400m-384",
    "google/siglip-so400m-patch14-384",
    _vit("siglip_vision_model", 1152, 4304, 27, 16, 384, "gelu_pytorch_tanh", 1e-6),
    _SIGLIP_IMAGE,
    "SigLIP SO400M/14 at 384 px (729 patches, no CLS)",
)
_add(
    "dfn5b-vit-h14-378",
    "apple/DFN5B-CLIP-ViT-H-14-378",
    _vit("clip_vision_model", 1280, 5120, 32, 16, 378, "quick_gelu", 1e-5),
    _CLIP_IMAGE,
    "Apple DFN5B CLIP ViT-H/14 at 378 px (729 patches + CLS)",
)
_add(
    "mlcd-vit-l14-336",
    "DeepGlint-AI/mlcd-vit-large-patch14-336",
    _vit("clip_vision_model", 1024, 4096, 24, 16, 336, "quick_gelu", 1e-5),
    _CLIP_IMAGE,
    "MLCD ViT-L/14 at 336 px (CLIP architecture, 576 patches + CLS)",
)
_add(
    "mlcd-vit-bigg14-336",
    "DeepGlint-AI/mlcd-vit-bigG-patch14-336",
    _vit("mlcd_vision_model", 1664, 8192, 48, 16, 336, "gelu", 1e-5),
    _CLIP_IMAGE,
    "MLCD ViT-bigG/14 with 2D RoPE at 336 px (576 patches + CLS)",
)
_add(
    "mlcd-vit-bigg14-448",
    "DeepGlint-AI/mlcd-vit-bigG-patch14-448",
    _vit("mlcd_vision_model", 1664, 8192, 48, 16, 448, "gelu", 1e-5),
    _CLIP_IMAGE,
    "MLCD ViT-bigG/14 with 2D RoPE at 448 px (1024 patches + CLS)",
)

_add(
    "rice-vit-l14-560",
    "DeepGlint-AI/rice-vit-large-patch14-560",
    _vit("mlcd_vision_model", 1024, 4096, 24, 16, 560, "gelu", 1e-5),
    _CLIP_IMAGE,
    "RICE ViT-L/14 with 2D RoPE at 560 px (1600 patches + CLS; LLaVA-OneVision-1.5's tower)",
)


def _add_convnext(name: str, hub_id: str, stages: int, image: int, help: str) -> None:
    """A ConvNeXt-Large preset (LAION's CLIP ConvNeXt-L, as ConvLLaVA ships it), with ConvLLaVA's
    fifth stage when `stages` is 5, and its tiny twin: one block per stage, widths 8..48, 128 px."""
    depths, widths = [3, 3, 27, 3, 6][:stages], [192, 384, 768, 1536, 3072][:stages]
    hf = {
        "model_type": "convnext", "num_stages": stages, "depths": depths, "hidden_sizes": widths,
        "patch_size": 4, "image_size": image, "hidden_act": "gelu", "layer_scale_init_value": 1e-6,
        "layer_norm_eps": 1e-12, "drop_path_rate": 0.0,
    }  # fmt: skip
    TOWER_PRESETS.add(name, TowerPreset({"hf_config": hf}, {**_CLIP_IMAGE, "size": image}, hub_id), help)
    tiny = {**hf, "depths": [1] * stages, "hidden_sizes": [8, 16, 24, 32, 48][:stages], "image_size": 128}
    TOWER_PRESETS.add(
        f"{name}-tiny",
        TowerPreset({"hf_config": tiny}, {**_CLIP_IMAGE, "size": 128}),
        f"tiny twin of {name}: one block per stage, widths 8..{tiny['hidden_sizes'][-1]}, 128 px",
    )


for _side in (768, 1024, 1536):
    _add_convnext(
        f"convllava-convnext-{_side}",
        f"ConvLLaVA/ConvLLaVA-ConvNeXt-{_side}",
        5,
        _side,
        f"ConvLLaVA's ConvNeXt-L + a fifth stage at {_side} px (stride 64: {(_side // 64) ** 2} tokens)",
    )
_add_convnext(
    "laion-convnext-large-512",
    "ConvLLaVA/LAION-CLIP-ConvNeXt-Large-512",
    4,
    512,
    "LAION CLIP ConvNeXt-L, four stages, at 512 px (stride 32: 256 tokens), ConvLLaVA's starting point",
)


_UNICOM_RELEASES = "https://github.com/deepglint/unicom/releases/download"


def _unicom(patch: int, width: int, layers: int, heads: int, image: int, embedding: int) -> dict:
    return {
        "model_type": "unicom_vision_model",
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "patch_size": patch,
        "image_size": image,
        "embedding_size": embedding,
    }


def _add_unicom(name: str, hf: dict, release: str, help: str) -> None:
    """A UNICOM preset (weights: a GitHub release file) and its tiny twin: 2 layers of width 32, the
    same patch size on a 2x2 grid (UNICOM's flatten head fixes the token count)."""
    image = {**_CLIP_IMAGE, "size": hf["image_size"]}
    preset = TowerPreset({"hf_config": hf}, image, weights_url=f"{_UNICOM_RELEASES}/{release}")
    TOWER_PRESETS.add(name, preset, help)
    size = 2 * hf["patch_size"]
    tiny = {**hf, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": size}
    tiny["embedding_size"] = 16
    tiny_help = f"tiny twin of {name}: width 32, 2 layers, {size} px (2x2 patches)"
    TOWER_PRESETS.add(
        f"{name}-tiny", TowerPreset({"hf_config": tiny}, {**_CLIP_IMAGE, "size": size}), tiny_help
    )


# deepglint/unicom unicom/vision_transformer.py build_model() and model.py _MODELS
_add_unicom(
    "unicom-vit-b32",
    _unicom(32, 768, 12, 12, 224, 512),
    "b32/FP16-ViT-B-32.pt",
    "UNICOM ViT-B/32 at 224 px (49 patches, no CLS; 512-d embedding)",
)
_add_unicom(
    "unicom-vit-b16",
    _unicom(16, 768, 12, 12, 224, 768),
    "b16/FP16-ViT-B-16.pt",
    "UNICOM ViT-B/16 at 224 px (196 patches, no CLS; 768-d embedding)",
)
_add_unicom(
    "unicom-vit-l14",
    _unicom(14, 1024, 24, 16, 224, 768),
    "l14/FP16-ViT-L-14.pt",
    "UNICOM ViT-L/14 at 224 px (256 patches, no CLS; 768-d embedding)",
)
_add_unicom(
    "unicom-vit-l14-336",
    _unicom(14, 1024, 24, 16, 336, 768),
    "l14_336px/FP16-ViT-L-14-336px.pt",
    "UNICOM ViT-L/14 at 336 px (576 patches, no CLS; 768-d embedding)",
)


def resolve_tower(spec: str) -> TowerPreset:
    """A preset from a preset name, a known hub id, a local transformers tower directory, or any
    other hub id (``owner/name``: its config and processor settings are downloaded).

    Known hub ids resolve offline to their preset; a directory is read from its config.json and
    preprocessor_config.json. Any other string is an error listing the presets.
    """
    if spec in TOWER_PRESETS:
        return TOWER_PRESETS.get(spec)
    for name in TOWER_PRESETS:
        preset = TOWER_PRESETS.get(name)
        if preset.hub_id is not None and preset.hub_id.lower() == spec.lower():
            return preset
    path = Path(spec)
    if path.is_dir():
        return _preset_from_dir(path)
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _preset_from_hub(spec)
    TOWER_PRESETS.get(spec)  # raises with suggestions
    raise AssertionError("unreachable")


def _preset_from_hub(hub_id: str) -> TowerPreset:
    """A tower no preset knows (e.g. vMLLM's openai/clip-vit-base-patch32), from the hub."""
    from ..errors import CheckpointError

    try:
        directory = resolve_directory(hub_id)
    except CheckpointError as err:
        raise ConfigError(
            f"tower {hub_id!r} is no preset ({', '.join(TOWER_PRESETS.names())}) and {err}"
        ) from None
    preset = _preset_from_dir(directory)
    return TowerPreset(preset.tower, preset.image, hub_id)


def build_tower(
    spec: str | dict,
    pretrained: bool = False,
    weights: str | Path | None = None,
    overrides: dict | None = None,
) -> tuple[VisionTower, dict]:
    """(tower, image defaults) for a preset/hub id/directory, or for a whole transformers vision
    config (a dict: random weights). The one place fovea builds a tower.

    Weights: from `weights` (a file in any published form, e.g. DeepGlint's original MLCD state
    dict) when given; else the published ones when `pretrained`; else random. `overrides` changes
    fields of the preset's transformers config (another architecture: random weights only).
    """
    if isinstance(spec, dict):
        return VisionTower(TowerConfig(hf_config=dict(spec))), {"size": int(spec.get("image_size", 224))}
    preset = resolve_tower(spec)
    if overrides:
        if pretrained or weights is not None:
            raise ConfigError(
                f"tower {spec!r}: overrides change the architecture, so its weights cannot load"
            )
        hf = {**preset.tower["hf_config"], **overrides}
        try:
            tower = VisionTower(TowerConfig(**{**preset.tower, "hf_config": hf}))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"tower {spec!r} with {sorted(overrides)} changed: {err}") from None
        return tower, {**preset.image, "size": int(hf.get("image_size", preset.image["size"]))}
    config = preset.tower_config()
    if weights is not None:
        tower = VisionTower(config)
        tower.load_weights(weights)
        return tower, preset.image
    if pretrained:
        source = pretrained_source(spec)
        if source is None and preset.weights_url is not None:
            raise ConfigError(
                f"tower {spec!r}: its weights are a file ({preset.weights_url}); download it and "
                "pass it as weights (--weights FILE)"
            )
        if source is None:
            raise ConfigError(f"tower {spec!r} has no published weights (a tiny test preset?)")
        return VisionTower.from_pretrained(config, source), preset.image
    return VisionTower(config), preset.image


def token_arithmetic(rows: list[tuple[str, int]]) -> str:
    """The Markdown table resolution -> grid -> tokens, one square view of each (preset, side), from
    the preset's last feature level (docs/towers.md holds it; a test keeps the two equal)."""
    from .base import levels_of

    lines = ["| preset | side (px) | stride | grid | tokens |", "|---|---|---|---|---|"]
    for name, side in rows:
        level = levels_of(resolve_tower(name).tower_config())[-1]
        grid = level.grid(side, side)
        lines.append(f"| {name} | {side} | {level.stride} | {grid[0]}x{grid[1]} | {grid[0] * grid[1]} |")
    return "\n".join(lines)


TOKEN_ROWS = [
    *((f"convllava-convnext-{side}", side) for side in (768, 1024, 1536)),
    ("laion-convnext-large-512", 512),
    ("laion-convnext-large-512", 768),
    ("clip-vit-l14-336", 336),
    ("siglip-so400m-384", 384),
    ("mlcd-vit-bigg14-448", 448),
]
"""The rows docs/towers.md shows."""


def pretrained_source(spec: str) -> str | None:
    """Where a tower's transformers weights come from: its directory, or its preset's hub id."""
    return spec if Path(spec).is_dir() else resolve_tower(spec).hub_id


def _preset_from_dir(path: Path) -> TowerPreset:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{path}: not a tower directory (no config.json)")
    hf = json.loads(cfg_file.read_text())
    if hf.get("model_type") in ("clip", "siglip"):  # a two-tower checkpoint: keep its vision half
        hf = {**hf.get("vision_config", {}), "model_type": f"{hf['model_type']}_vision_model"}
    if "model_type" not in hf:
        raise ConfigError(f"{cfg_file}: no model_type; cannot tell which tower this is")
    image = image_defaults_from_processor(read_processor_settings(path), int(hf.get("image_size", 224)))
    return TowerPreset({"hf_config": hf}, image, str(path))


def read_processor_settings(directory: Path) -> dict | None:
    """Image-processor settings of a transformers directory: ``preprocessor_config.json``, or the
    ``image_processor`` section of ``processor_config.json`` (where transformers 5 writes them)."""
    legacy, combined = directory / "preprocessor_config.json", directory / "processor_config.json"
    if legacy.is_file():
        return json.loads(legacy.read_text())
    if combined.is_file():
        return json.loads(combined.read_text()).get("image_processor")
    return None


def image_defaults_from_processor(proc: dict | None, size: int) -> dict:
    """ImageConfig fields from transformers image-processor settings (CLIP defaults if None)."""
    if proc is None:
        return {**_CLIP_IMAGE, "size": size}
    resample = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}.get(
        proc.get("resample", 3), "bicubic"
    )
    crop = proc.get("crop_size")
    crop_side = crop.get("height") if isinstance(crop, dict) else crop
    return {
        "size": int(crop_side or size),
        "mean": list(proc.get("image_mean", CLIP_MEAN)),
        "std": list(proc.get("image_std", CLIP_STD)),
        "resample": resample,
        "resize": "shortest_edge_crop" if proc.get("do_center_crop", False) else "squash",
    }
