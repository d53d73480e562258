"""Exceptions a caller can catch.

Every error a user can cause (a bad image, a bad config key, a broken checkpoint) is one of these,
with a one-line message naming the file, key or field. They subclass ValueError so code written
against plain Python conventions keeps working; the CLI turns them into one line and exit code 2.
"""


class FoveaError(ValueError):
    """Base class for errors caused by user input (files, configs, checkpoints)."""


class ImageError(FoveaError):
    """An image could not be loaded or is unsafe to decode (names the file)."""


class ConfigError(FoveaError):
    """A config or recipe is invalid: unknown key, wrong type, bad value (names the key)."""


class CheckpointError(FoveaError):
    """A checkpoint is missing, truncated or does not fit the model (names the file or key)."""
