"""Atomic file writes: a fresh temporary file beside the target, then a rename over it.

The temporary name is new each time and created exclusively, so no existing file (a user's, or
another writer's) is ever reused or overwritten on the way, and it is removed on any error: a
reader sees the old file or the new one, never half of one, and nothing is left behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def fresh_temporary(target: Path) -> Path:
    """A new empty file beside `target`, with the usual permissions (the umask's, unlike
    mkstemp's owner-only 0600)."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def write_atomic(target: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` fills a fresh temporary file, which then replaces `target`."""
    tmp = fresh_temporary(target)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(target: Path, text: str) -> None:
    write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
