"""Where a checkpoint is: a local directory, or a hub id downloaded where there is network.

The bottom layer of fovea: towers, fusers and checkpoint readers all resolve names here, so none
of them imports another layer to find a file. Tests never reach the hub (a socket guard and
``HF_HUB_OFFLINE=1``): a hub id there fails with one line.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError

HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "mm_projector.bin"]
"""What a checkpoint download fetches: configs, weights and tokenizer files (no other formats)."""


def resolve_directory(source: str | Path) -> Path:
    """A local checkpoint directory for `source` (downloading a hub id when there is network)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise CheckpointError(f"{source}: no such checkpoint directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), allow_patterns=HUB_PATTERNS))
    except Exception as err:  # network, auth, missing repo: one line whatever the cause
        raise CheckpointError(
            f"{source}: not a local directory and not downloadable ({type(err).__name__})"
        ) from None
