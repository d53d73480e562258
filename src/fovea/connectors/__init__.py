"""Connectors: layer selection, fusers and projectors between a tower and a language model."""

from .connector import Connector, ConnectorConfig
from .fusers import FUSERS, Fuser, FuserInput
from .mmfuser import MMFuser, MMFuserConfig  # registers the 'mmfuser' fuser
from .projectors import PROJECTORS, build_projector
from .vmllm import VMLLMConfig, VMLLMFuser  # registers the 'vmllm' fuser

__all__ = [
    "FUSERS",
    "PROJECTORS",
    "Connector",
    "ConnectorConfig",
    "Fuser",
    "FuserInput",
    "MMFuser",
    "MMFuserConfig",
    "VMLLMConfig",
    "VMLLMFuser",
    "build_projector",
]
