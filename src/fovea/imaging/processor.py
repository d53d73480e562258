"""Images -> normalised tiles for a vision tower: ``square``, ``pad``, ``anyres``, ``anyres_max_N``.

The output equals transformers' ``LlavaNextImageProcessor`` (PIL backend) for anyres, and the CLIP
/ SigLIP processors for a single square view, but it is built for speed:

* each image is resized once by PIL and never converted to float until the last step;
* the two resizes an AnyRes image needs (tiles, base view) run on two threads: Pillow releases
  the GIL while resampling, and these resizes are most of the work; a batch of images is spread
  over a small thread pool the same way;
* padding is done on the uint8 canvas; rescale + normalise is one fused multiply-add;
* tiles are cut by one reshape of the padded canvas, not by slicing and stacking.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, ImageError
from . import anyres
from .io import DEFAULT_MAX_PIXELS, ImageSource, load_image, to_rgb

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def check_image_mode(mode: str) -> None:
    if mode not in ("square", "pad", "anyres") and anyres.parse_max_tiles(mode) is None:
        raise ValueError(f"unknown image mode {mode!r}; expected square, pad, anyres or anyres_max_N")


@dataclass(kw_only=True)
class ImageConfig:
    """How an image becomes the tiles a tower sees."""

    size: int = 336
    """Tile side in pixels (the tower's input resolution)."""
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bicubic"
    resize: Literal["shortest_edge_crop", "squash"] = "shortest_edge_crop"
    """A square view: CLIP-style (shortest edge to `size`, centre crop) or SigLIP-style (squash)."""
    mode: str = "square"
    """``square`` | ``pad`` (expand to square with the mean colour) | ``anyres`` | ``anyres_max_N``."""
    grid_pinpoints: list[list[int]] | str | None = None
    """AnyRes resolutions as ``[height, width]`` pairs, or a range string ``"(1x1),...,(3x3)"``."""
    multi_image_mode: str | None = None
    """Mode for samples with several images (LLaVA-NeXT uses ``pad``); None: same as `mode`."""
    frames_above: int | None = 8
    """A sample with more images than this runs them as frames: each padded, pooled and separated
    as a one-frame video (MLCD-Embodied's train.py and evaluation; None: never)."""
    alpha: Literal["drop", "white"] = "drop"
    """Transparency rule: ``drop`` = PIL convert('RGB') (LLaVA-NeXT); ``white`` (transformers)."""
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need three values (R, G, B)")
        for mode in (self.mode, self.multi_image_mode):
            if mode is not None:
                check_image_mode(mode)
        if self.uses_anyres and self.grid_pinpoints is None:
            raise ValueError(f"image mode {self.mode!r} needs grid_pinpoints")
        if self.grid_pinpoints is not None:
            anyres.parse_pinpoints(self.grid_pinpoints, self.size)
        if self.frames_above is not None and self.frames_above < 0:
            raise ValueError(f"frames_above: expected a count of images or null, got {self.frames_above}")

    @property
    def uses_anyres(self) -> bool:
        return any(m is not None and m.startswith("anyres") for m in (self.mode, self.multi_image_mode))

    @property
    def pinpoints(self) -> list[anyres.Size]:
        if self.grid_pinpoints is None:
            raise ConfigError("this image config has no grid_pinpoints")
        return anyres.parse_pinpoints(self.grid_pinpoints, self.size)

    def mode_for(self, num_images: int) -> str:
        return self.multi_image_mode if num_images > 1 and self.multi_image_mode else self.mode


@dataclass
class ImageLayout:
    """Where one image's views sit and how they were cut."""

    size: anyres.Size
    """Original (height, width) after EXIF orientation."""
    mode: str
    grid: anyres.Size | None = None
    """(rows, cols) of AnyRes tiles; None for a single square view."""
    frames: int = 0
    """Frames of a video (each a single view, pooled when packed); 0 for an image. An image of a
    sample with more than `ImageConfig.frames_above` images is a video of one frame."""

    @property
    def num_views(self) -> int:
        if self.frames:
            return self.frames
        return 1 if self.grid is None else 1 + self.grid[0] * self.grid[1]


@dataclass
class ProcessedImages:
    """All views of a list of images, batched for one tower call."""

    pixels: torch.Tensor
    """(V, 3, S, S) float32: for each image, its views in order (AnyRes: base view first)."""
    layouts: list[ImageLayout]

    def __len__(self) -> int:
        """How many images (not views)."""
        return len(self.layouts)


_PARALLEL_PIXELS = 1_000_000
"""One image of at least this many pixels has its AnyRes resizes done in parallel."""


class ImageProcessor:
    """Turns images into tower-ready tiles according to an `ImageConfig`."""

    def __init__(self, config: ImageConfig):
        self.config = config
        self._resample = _RESAMPLE[config.resample]
        self._pinpoints = config.pinpoints if config.grid_pinpoints is not None else None
        # (v/255 - mean) / std == v * scale + shift, per channel
        std = torch.tensor(config.std, dtype=torch.float64)
        self._scale = (1.0 / (255.0 * std)).float().view(3, 1, 1)
        self._shift = (-torch.tensor(config.mean, dtype=torch.float64) / std).float().view(3, 1, 1)

    def load(self, source: ImageSource) -> Image.Image:
        return load_image(source, max_pixels=self.config.max_pixels, alpha=self.config.alpha)

    def sample(self, items: list[ImageSource | list[ImageSource]]) -> ProcessedImages:
        """The images and videos of one sample (one prompt, one record, one request): when it has
        more than `frames_above` images, each is a padded one-frame video (MLCD-Embodied's rule)."""
        stills = sum(not isinstance(item, (list, tuple)) for item in items)
        limit = self.config.frames_above
        return self(items, as_frames=limit is not None and stills > limit)

    def __call__(
        self, images: list[ImageSource | list[ImageSource]], as_frames: bool = False
    ) -> ProcessedImages:
        """Every item's views, in order (a batch of images, or a sample's items: see `sample`). An
        item that is a list is a video: its frames, each one square view. `as_frames`: every
        image is a padded one-frame video."""
        still = [not isinstance(item, (list, tuple)) for item in images]
        mode = "pad" if as_frames else self.config.mode_for(sum(still))
        items = [
            [self.load(item)] if one else [self.load(frame) for frame in item]
            for one, item in zip(still, images)
        ]
        frames = [not one or as_frames for one in still]

        def views(i: int, parallel: bool) -> tuple[torch.Tensor, ImageLayout]:
            if frames[i]:
                return self._frames(items[i], mode if still[i] else "square")
            return self._views(items[i][0], mode, parallel)

        if len(items) > 1:  # one item per worker; each worker does its item's resizes in turn
            done = list(_pool().map(lambda i: views(i, parallel=False), range(len(items))))
        else:  # a small image's resizes are quicker done than handed to a busy pool
            done = (
                [views(0, parallel=items[0][0].width * items[0][0].height >= _PARALLEL_PIXELS)]
                if items
                else []
            )
        size = self.config.size
        pixels = torch.cat([v for v, _ in done]) if done else torch.empty(0, 3, size, size)
        return ProcessedImages(pixels=pixels, layouts=[layout for _, layout in done])

    def _frames(self, frames: list[Image.Image], mode: str) -> tuple[torch.Tensor, ImageLayout]:
        """One square view per frame (``pad``: each expanded to a square with the mean colour first)."""
        if not frames:
            raise ImageError("a video with no frames")
        square = [self._expand_to_square(f) if mode == "pad" else f for f in frames]
        views = torch.stack([self._normalise(self._square(f)) for f in square])
        return views, ImageLayout(size=(frames[0].height, frames[0].width), mode=mode, frames=len(frames))

    def layout(self, size: anyres.Size, mode: str) -> ImageLayout:
        """The layout an image of `size` gets, without touching pixels (for token counting)."""
        if mode.startswith("anyres"):
            return ImageLayout(
                size=size, mode=mode, grid=anyres.tile_grid(size, self._pinpoints, self.config.size)
            )
        return ImageLayout(size=size, mode=mode)

    # -- views --------------------------------------------------------------------------------

    def _views(self, image: Image.Image, mode: str, parallel: bool) -> tuple[torch.Tensor, ImageLayout]:
        size = (image.height, image.width)
        layout = self.layout(size, mode)
        if layout.grid is None:
            if mode == "pad":
                image = self._expand_to_square(image)
            return self._normalise(self._square(image))[None], layout
        return self._anyres(image, layout, parallel), layout

    def _anyres(self, image: Image.Image, layout: ImageLayout, parallel: bool) -> torch.Tensor:
        s = self.config.size
        rows, cols = layout.grid
        target = (rows * s, cols * s)
        inner = anyres.fit_size(layout.size, target)
        # The base view is the whole image squashed to S x S (LLaVA-NeXT resizes, it does not pad).
        base_job = _pool().submit(image.resize, (s, s), self._resample) if parallel else None
        resized = np.asarray(image.resize((inner[1], inner[0]), self._resample))
        canvas = np.zeros((*target, 3), dtype=np.uint8)  # black padding, as LLaVA-NeXT pastes
        top, left = anyres.pad_offsets(inner, target)
        canvas[top : top + inner[0], left : left + inner[1]] = resized
        out = torch.empty(1 + rows * cols, 3, s, s)
        # (rows*S, cols*S, 3) uint8 -> (rows, cols, 3, S, S) float32 in one strided conversion
        tiles = torch.from_numpy(canvas).view(rows, s, cols, s, 3).permute(0, 2, 4, 1, 3)
        out[1:].view(rows, cols, 3, s, s).copy_(tiles)
        out[1:].mul_(self._scale).add_(self._shift)
        base_image = base_job.result() if base_job else image.resize((s, s), self._resample)
        out[0] = self._normalise(np.array(base_image))
        return out

    def _square(self, image: Image.Image) -> np.ndarray:
        s = self.config.size
        if self.config.resize == "squash":
            return np.array(image.resize((s, s), self._resample))
        w, h = image.size
        # Shortest edge to S, the other side truncated as transformers' get_resize_output_image_size.
        nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        resized = image.resize((nw, nh), self._resample) if (nw, nh) != (w, h) else image
        array = np.asarray(resized)
        if nh < s or nw < s:  # centre crop pads with zeros when the image is smaller than the crop
            padded = np.zeros((max(nh, s), max(nw, s), 3), dtype=np.uint8)
            top, left = (padded.shape[0] - nh) // 2, (padded.shape[1] - nw) // 2
            padded[top : top + nh, left : left + nw] = array
            array, nh, nw = padded, padded.shape[0], padded.shape[1]
        top, left = (nh - s) // 2, (nw - s) // 2
        return np.array(array[top : top + s, left : left + s])

    def _expand_to_square(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if w == h:
            return image
        side = max(w, h)
        colour = tuple(int(m * 255) for m in self.config.mean)
        square = Image.new("RGB", (side, side), colour)
        square.paste(to_rgb(image), ((side - w) // 2, (side - h) // 2))
        return square

    def _normalise(self, array: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 (writable) -> (3, H, W) float32, rescaled and normalised."""
        chw = torch.from_numpy(array).permute(2, 0, 1)
        return torch.addcmul(self._shift, chw.float(), self._scale)


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    """Threads for PIL resizes (which release the GIL); shared by all processors of a process. One
    per process: a forked DataLoader worker inherits the parent's pool without its threads, and
    work handed to it would wait forever."""
    pid = os.getpid()
    if pid not in _POOLS:
        _POOLS.clear()
        _POOLS[pid] = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="fovea-img"
        )
    return _POOLS[pid]
