"""Checkpoints: fovea's own format and the layouts of released models, loaded on the meta device."""

from ..hub import resolve_directory
from .loader import DTYPES, dtype_from_name, load

__all__ = ["DTYPES", "dtype_from_name", "load", "resolve_directory"]
