"""Checkpoints: fovea's own format and the layouts of released models, loaded on the meta device."""

from ..dtypes import DTYPES, dtype_from_name
from ..hub import resolve_directory
from .loader import load

__all__ = ["DTYPES", "dtype_from_name", "load", "resolve_directory"]
