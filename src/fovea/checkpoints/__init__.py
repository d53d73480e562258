"""Checkpoints: fovea's own format and the layouts of released models, loaded on the meta device."""

from .loader import DTYPES, dtype_from_name, load, resolve_directory

__all__ = ["DTYPES", "dtype_from_name", "load", "resolve_directory"]
