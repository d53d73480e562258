"""vMLLM's released checkpoints (xmu-xiaoma666/vMLLM_{7B,8B,13B}_{sft,pretrain}), LLaVA-1.5 layout.

Nothing in config.json says vMLLM (``mm_projector_type: mlp2x_gelu``): the checkpoint is recognised
by its projector weights, ``model.mm_projector.img_low_q_proj.weight``. Its ``ProjectBlock`` holds
the MLP at ``proj.0`` / ``proj.2`` and the enhancement's linears beside it; fovea names them::

    img_low_{q,k,v}_proj   -> connector.fuser.enhance.low.{query,key,value}
    img_high_{q,k,v}_proj  -> connector.fuser.enhance.high.{...}
    {q,k,v}_proj           -> connector.fuser.enhance.image_gate.{...}
    txt_{q,k,v}_proj       -> connector.fuser.enhance.text_gate.{...}
    proj.0, proj.2         -> connector.projector.0, .2

As the original does at inference, every tower weight comes from ``mm_vision_tower`` (the vision
half, the text half and, for CLIP, its two projections); the copies inside the checkpoint are
ignored. The tower runs whole for CLIP (the selected stream is ``mm_vision_select_layer``, CLS
kept until the gates) and without its last block for SigLIP (the selected stream is the truncated
tower's last state); all its hidden states are aggregated. P is read from the gate weights and
checked against the tower (CLIP's ``projection_dim``; SigLIP's width).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..hub import resolve_directory
from ..towers.base import TowerConfig, family_of, levels_of

MARKER = "model.mm_projector.img_low_q_proj.weight"
_PROJECTOR = "model.mm_projector."
_LINEARS = {"q": "query", "k": "key", "v": "value"}
_GROUPS = {"img_low_": "low", "img_high_": "high", "txt_": "text_gate", "": "image_gate"}


def detect(shapes: dict) -> bool:
    return MARKER in shapes


def connector_fields(raw: dict, tower: TowerConfig, shapes: dict, selected: list[int], where: Path) -> dict:
    """fovea's ``connector`` for a vMLLM checkpoint (config and weights must agree)."""
    from ..connectors.vmllm import text_fields

    levels = levels_of(tower)
    hidden = len(levels)
    if not family_of(tower).llava_selects:
        select = -1  # the original's SigLIP tower ignores the select layer: its (truncated) last state
    elif len(selected) == 1:
        select = selected[0]
    else:
        raise CheckpointError(f"{where}: mm_vision_select_layer {selected}: vMLLM selects one layer")
    try:
        fields = text_fields(str(resolve_directory(raw.get("mm_vision_tower"))))
    except ConfigError as err:
        raise CheckpointError(f"{where}: mm_vision_tower: {err}") from None
    fused = shapes[f"{_PROJECTOR}q_proj.weight"][0]
    expected = fields["projection_dim"] or levels[-1].width
    if fused != expected:
        raise CheckpointError(
            f"{where}: {_PROJECTOR}q_proj.weight has width {fused}, but mm_vision_tower's "
            f"{'projection_dim' if fields['projection_dim'] else 'hidden size'} is {expected}"
        )
    return {
        "layers": [*range(hidden), select],
        "fuser": {"type": "vmllm", **fields, "faithful": True},
        "projector": "mlp2x_gelu",
    }


def projector_key(rest: str) -> str:
    """``model.mm_projector.`` key remainder -> fovea key."""
    if rest.startswith("proj."):
        return "connector.projector." + rest.removeprefix("proj.")
    module, _, tensor = rest.partition(".")
    for start, group in _GROUPS.items():
        name = module.removeprefix(start).removesuffix("_proj")
        if module.startswith(start) and module.endswith("_proj") and name in _LINEARS:
            return f"connector.fuser.enhance.{group}.{_LINEARS[name]}.{tensor}"
    raise CheckpointError(f"{_PROJECTOR}{rest}: not a tensor of vMLLM's ProjectBlock")


def tower_key(key: str, tower_key_of) -> str | None:
    """A key of the ``mm_vision_tower`` checkpoint: the text half and CLIP's projections go to the
    fuser, the vision half to the tower (through `tower_key_of`)."""
    if key.startswith("text_model."):
        return (
            None
            if key.endswith("position_ids")
            else "connector.fuser.text." + key.removeprefix("text_model.")
        )
    if key == "visual_projection.weight":
        return "connector.fuser.projection.visual.weight"
    if key == "text_projection.weight":
        return "connector.fuser.projection.text.weight"
    return tower_key_of(key)


def attach(model, tower_source: str) -> None:
    """The text tokenizer, from ``mm_vision_tower`` as the original reads it."""
    from ..connectors.vmllm import load_text_tokenizer

    model.connector.fuser.tokenizer = load_text_tokenizer(resolve_directory(tower_source))
