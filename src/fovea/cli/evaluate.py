"""`fovea eval` and `fovea bench`: benchmark runs, reports and benchmark-data converters."""

from __future__ import annotations


def add_commands(sub) -> None:
    pass
