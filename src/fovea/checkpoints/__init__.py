"""Checkpoints: fovea's own format and the layouts of released models, loaded on the meta device."""

from .loader import load, resolve_directory

__all__ = ["load", "resolve_directory"]
