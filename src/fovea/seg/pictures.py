"""What `fovea segment` writes: each mask as a PNG the image's size, and an overlay of them all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import write_atomic

# distinct, colour-blind-friendly fills (Okabe-Ito), one per mask in turn
COLOURS = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)


def save_png(path: Path, image: Image.Image) -> None:
    write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def mask_image(mask: np.ndarray) -> Image.Image:
    """(H, W) bool -> a black and white PNG image (255 inside)."""
    return Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L")


def overlay(image: Image.Image, masks: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image with each mask filled in its colour at `alpha`, and outlined."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    for k, mask in enumerate(np.asarray(masks, dtype=bool)):
        colour = np.array(COLOURS[k % len(COLOURS)], dtype=np.float32)
        base[mask] = (1 - alpha) * base[mask] + alpha * colour
        edge = mask & ~_eroded(mask)
        base[edge] = colour
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


def _eroded(mask: np.ndarray) -> np.ndarray:
    """A mask less its one-pixel border (4-neighbourhood)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def write_pictures(out: Path, image: Image.Image, masks: np.ndarray) -> list[Path]:
    """OUT/mask-K.png for each mask and OUT/overlay.png; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, mask in enumerate(masks):
        save_png(out / f"mask-{k}.png", mask_image(mask))
        written.append(out / f"mask-{k}.png")
    save_png(out / "overlay.png", overlay(image, masks))
    return [*written, out / "overlay.png"]
