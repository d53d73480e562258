"""Image loading, AnyRes geometry and tower-ready tiles."""

from .io import DEFAULT_MAX_PIXELS, load_image, to_rgb
from .processor import CLIP_MEAN, CLIP_STD, ImageConfig, ImageLayout, ImageProcessor, ProcessedImages

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_MAX_PIXELS",
    "ImageConfig",
    "ImageLayout",
    "ImageProcessor",
    "ProcessedImages",
    "load_image",
    "to_rgb",
]
