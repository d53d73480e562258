"""Test setup: no network (a socket guard plus HF offline mode), fixed seeds, shared tiny models."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))


class NetworkBlocked(RuntimeError):
    pass


_LOOPBACK = ("127.", "::1", "localhost")
_connect, _connect_ex, _create_connection = (
    socket.socket.connect,
    socket.socket.connect_ex,
    socket.create_connection,
)


def _host(address) -> str:
    return str(address[0]) if isinstance(address, tuple) else str(address)


def _loopback_only(original):
    """Allow the project's own servers on loopback (and local unix sockets); refuse the rest."""

    def guarded(*args, **kwargs):
        address = args[1] if original is not _create_connection else args[0]
        host = _host(address)
        if isinstance(address, (str, bytes)) or host.startswith(_LOOPBACK):
            return original(*args, **kwargs)
        raise NetworkBlocked(f"tests must not touch the network (tried {host})")

    return guarded


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _loopback_only(_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", _loopback_only(_connect_ex))
    monkeypatch.setattr(socket, "create_connection", _loopback_only(_create_connection))


class _Deprecations(logging.Handler):
    """transformers reports some deprecations through its logger (``warning_once``), not the
    warnings module that pyproject's filterwarnings turns into errors."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "deprecat" in record.getMessage().lower():
            self.found.append(record.getMessage())


@pytest.fixture(autouse=True)
def _no_library_deprecations():
    """Every test fails on a deprecation transformers logs about a call fovea made."""
    import transformers.utils.logging  # noqa: F401  (defines Logger.warning_once)

    logging.Logger.warning_once.cache_clear()  # transformers logs each message once per process
    handler = _Deprecations()
    target = logging.getLogger("transformers")
    target.addHandler(handler)
    yield
    target.removeHandler(handler)
    assert not handler.found, f"transformers logged a deprecation: {handler.found[0]}"


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """Lazily built tiny transformers LlavaNext checkpoints, one per (tower kind, layers)."""
    from hf_reference import make_hf_llava_next

    cache: dict = {}

    def get(kind: str = "clip", layers=-2) -> Path:
        key = (kind, str(layers))
        if key not in cache:
            directory = tmp_path_factory.mktemp(f"hf-{kind}")
            cache[key] = make_hf_llava_next(directory, kind=kind, layers=layers)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_model():
    from fovea.tiny import tiny_vlm

    return tiny_vlm()
