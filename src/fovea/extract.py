"""Vision features of image files: the MLCD quickstart as an API (``fovea extract`` on the CLI).

Images (files or folders, searched recursively) go through the tower's own preprocessing in
batches; one feature tensor per image is written to a safetensors file keyed by the image's name,
with the tower, layer and pooling in the file's metadata. A bad image either stops the run
(after saving everything extracted so far) or, with ``skip_bad``, is reported and skipped.
The output is written atomically (a temporary file beside it, then a rename) and an output that
is one of the input images, or a directory, is refused before the tower is built.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .atomic import write_atomic
from .errors import ConfigError, ImageError
from .imaging.processor import ImageConfig, ImageProcessor
from .towers.base import VisionTower
from .towers.presets import build_tower

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
Pool = Literal["none", "cls", "mean"]


@dataclass
class Extracted:
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(image name, reason) of images left out with ``skip_bad``."""


def find_images(inputs: Iterable[str | Path]) -> list[tuple[str, Path]]:
    """(name, path) for files given directly and image files found under folders."""
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            found.extend((str(p.relative_to(path.parent)), p) for p in files)
        else:
            found.append((str(item), path))  # a missing file is reported when it is read
    return found


def pool_features(hidden: torch.Tensor, pool: Pool, num_prefix: int) -> torch.Tensor:
    """(B, P+N, D) one layer's tokens -> per image (B, P+N, D), (B, D) CLS, or (B, D) patch mean."""
    if pool == "none":
        return hidden
    if pool == "cls":
        if num_prefix == 0:
            raise ConfigError("pool 'cls' needs a tower with a CLS token; use 'mean' or 'none'")
        return hidden[:, 0]
    return hidden[:, num_prefix:].mean(dim=1)


@torch.inference_mode()
def extract_features(
    tower: str | VisionTower,
    images: Iterable[str | Path],
    *,
    image_config: ImageConfig | None = None,
    layer: int = -1,
    pool: Pool = "none",
    batch_size: int = 16,
    skip_bad: bool = False,
    pretrained: bool = True,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
    out: str | Path | None = None,
    progress: bool = False,
) -> Extracted:
    """Features of `images` from `tower` (a preset name, hub id, tower directory or a built tower)."""
    todo = find_images(images)
    if out is not None:
        out = Path(out)
        check_output(out, [path for _, path in todo])  # before the tower is built or downloaded
    tower, name, image_config = _tower(tower, image_config, pretrained, weights)
    tower.to(device).eval()
    processor = ImageProcessor(image_config)
    result = Extracted()
    try:
        for start in tqdm(
            range(0, len(todo), batch_size), disable=not progress, desc="extract", unit="batch"
        ):
            _extract_batch(tower, processor, todo[start : start + batch_size], layer, pool, skip_bad, result)
    except ImageError as err:
        kept = f"; the {len(result.features)} features extracted before it were saved to {out}" if out else ""
        raise ImageError(f"{err}{kept if result.features else ''}") from None
    finally:
        if out is not None and result.features:
            save_features(result, out, {"tower": name, "layer": str(layer), "pool": pool})
    return result


def _tower(tower, image_config, pretrained, weights) -> tuple[VisionTower, str, ImageConfig]:
    if not isinstance(tower, str):
        if image_config is None:
            raise ConfigError("a built tower needs an image_config")
        return tower, tower.config.weights or tower.config.model_type, image_config
    built, defaults = build_tower(tower, pretrained=pretrained, weights=weights)
    return built, tower, image_config or ImageConfig(**defaults)


def check_output(out: Path, inputs: Iterable[Path]) -> None:
    """ConfigError when `out` cannot be a file or is one of the input images (it would replace it)."""
    if out.is_dir():
        raise ConfigError(f"{out}: is a directory; give a file name, e.g. {out / 'features.safetensors'}")
    above = next(p for p in out.absolute().parents if p.exists())
    if not above.is_dir():
        raise ConfigError(f"{out}: {above} is a file, not a directory")
    target = out.resolve()
    if any(path.resolve() == target for path in inputs):
        raise ConfigError(f"{out}: the output is one of the input images; choose another file")
    if out.exists() and not _written_by_extract(out):
        raise ConfigError(
            f"{out}: exists and is not a features file fovea extract wrote; choose another file"
        )


def _written_by_extract(path: Path) -> bool:
    """Only a safetensors file carrying extract's metadata may be replaced by a new extraction."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except (OSError, SafetensorError):
        return False
    return {"tower", "layer", "pool", "count"} <= set(metadata)


def _extract_batch(tower, processor, batch, layer, pool, skip_bad, result: Extracted) -> None:
    pixels, names = [], []
    for name, path in batch:
        try:
            pixels.append(processor([path]).pixels)
            names.append(name)
        except ImageError as err:
            if not skip_bad:
                _run_tower(tower, pixels, names, layer, pool, result)  # keep the good ones before it
                raise
            logger.warning("skipped %s", err)
            result.skipped.append((name, str(err)))
    _run_tower(tower, pixels, names, layer, pool, result)


def _run_tower(tower, pixels, names, layer, pool, result: Extracted) -> None:
    if not pixels:
        return
    out = tower(torch.cat(pixels))
    if not -len(out.hidden_states) <= layer < len(out.hidden_states):
        raise ConfigError(f"layer {layer} is outside the tower's {len(out.hidden_states)} hidden states")
    feats = pool_features(out.hidden_states[layer], pool, out.num_prefix_tokens).float().cpu()
    for name, feat in zip(names, feats):
        result.features[name] = feat.clone()


def save_features(result: Extracted, out: Path, metadata: dict[str, str]) -> None:
    """Write atomically: a fresh temporary file beside `out`, renamed over it; removed on any error."""
    metadata = {**metadata, "count": str(len(result.features))}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, lambda tmp: save_file(result.features, str(tmp), metadata=metadata))
    except OSError as err:
        raise _cannot_write(out, err) from None


def _cannot_write(out: Path, err: OSError) -> ConfigError:
    return ConfigError(f"{out}: cannot write the features: {err.strerror or err}")
