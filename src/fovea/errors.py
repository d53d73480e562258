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


class ContextLengthError(FoveaError):
    """A prompt plus its token budget does not fit the model's context (servers answer 400)."""


def library_error_line(err: BaseException) -> str:
    """A library's error as one short line. transformers' config checks (huggingface_hub strict
    dataclasses) wrap the real problem, which names the field, in a two-line message."""
    from huggingface_hub.errors import StrictDataclassError  # here: importing errors stays light

    cause = err.__cause__ if isinstance(err, StrictDataclassError) and err.__cause__ else err
    text = " ".join(line.strip() for line in str(cause).splitlines() if line.strip())
    # an unknown model_type is followed by every type transformers knows: 12k characters
    text = text.split(". Should contain one of ")[0]
    return (text[:297] + "..." if len(text) > 300 else text) or type(err).__name__
