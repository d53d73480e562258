"""Fusers that original LLaVA-1.5-layout checkpoints carry inside ``model.mm_projector``.

MMFuser (yuecao0119/MMFuser) saves its fuser block as the first module of the projector
``nn.Sequential``: ``model.mm_projector.0.*`` is the fuser (``MSCrossAttnBlock``), and the MLP
follows at ``.1``, ``.3`` (``mm_projector_type`` still says ``mlp2x_gelu``). Such a checkpoint is
recognised by its weights (a marker key), never by its path or model name. Its
``mm_vision_select_layer`` is a list (``[-22, -17, -12, -7, -2]``) or the string
``"list-22/-17/-12/-7/-2"``: the last index is the query, the rest are the levels, indexed as
``hidden_states[ix]`` (fovea's ``connector.layers`` use the same indexing).

A new fuser layout is one more `FuserLayout` row in `LAYOUTS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError

PREFIX = "model.mm_projector."


@dataclass(frozen=True)
class FuserLayout:
    name: str
    marker: str
    """Projector key (after ``model.mm_projector.0.``) whose presence identifies the fuser; its
    first dimension is the fuser's width."""
    fuser: dict = field(default_factory=dict)
    """fovea's ``connector.fuser`` for it (the original's hard-coded settings)."""
    min_layers: int = 2

    def check(self, layers: list[int], tower_width: int, shapes: dict, where: Path) -> None:
        """The config must agree with the weights: enough selected layers, the tower's width."""
        if len(layers) < self.min_layers:
            raise CheckpointError(
                f"{where}: mm_vision_select_layer {layers} selects {len(layers)} layer(s), but the "
                f"checkpoint holds {self.name} fuser weights ({PREFIX}0.{self.marker}), which need at "
                f"least {self.min_layers} (levels, then the query)"
            )
        width = shapes[f"{PREFIX}0.{self.marker}"][0]
        if width != tower_width:
            raise CheckpointError(
                f"{where}: {PREFIX}0.{self.marker} has width {width}, but mm_vision_tower's hidden "
                f"size is {tower_width}: the {self.name} fuser does not fit the tower"
            )

    def key(self, rest: str) -> str:
        """``mm_projector.`` key remainder -> fovea connector key: 0 is the fuser, the MLP follows."""
        index, _, name = rest.partition(".")
        if index == "0":
            return "connector.fuser." + name
        return f"connector.projector.{int(index) - 1}.{name}"


LAYOUTS = (
    FuserLayout(
        "mmfuser", "gamma1", {"type": "mmfuser", "heads": 16, "points": 4, "eps": 1e-6}, min_layers=2
    ),
)


def detect(shapes: dict) -> FuserLayout | None:
    """The fuser layout whose marker is among the checkpoint's projector keys, if any."""
    for layout in LAYOUTS:
        if f"{PREFIX}0.{layout.marker}" in shapes:
            return layout
    return None


def of_model(model_keys: set[str]) -> FuserLayout | None:
    """The fuser layout of a built fovea model (from its state-dict keys), if any."""
    for layout in LAYOUTS:
        if f"connector.fuser.{layout.marker}" in model_keys:
            return layout
    return None


def select_layers(value, where: Path) -> list[int]:
    """``mm_vision_select_layer`` as saved: an int, a list of ints, or ``"list-22/-17/..."``."""
    try:
        if isinstance(value, str) and value.startswith("list"):
            return [int(s) for s in value[4:].split("/")]
        if isinstance(value, list):
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError
            return list(value)
        if isinstance(value, bool):
            raise ValueError
        return [int(value)]
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{where}: mm_vision_select_layer {value!r}: expected an int, a list of ints or "
            '"list-22/-17/-12/-7/-2"'
        ) from None
