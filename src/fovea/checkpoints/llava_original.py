"""Read checkpoints in the original LLaVA-NeXT layout (``llava_qwen``, ``llava_llama``,
``llava_mistral``, and ``llava`` as OneVision/LLaVA-1.6 releases are edited for serving).

Config: the LM's own fields at the top level plus ``mm_*`` fields; the LM type comes from the
declared ``model_type``, or for ``llava`` from ``architectures``. The tower comes from
``mm_vision_tower`` (a known hub id resolves offline to its preset, or a local directory);
its weights are inside the checkpoint (``model.vision_tower.vision_tower.*``), or in that
directory. LLaVA-NeXT reads ``image_grid_pinpoints`` lists as (width, height): they are swapped
into fovea's (height, width) here. SigLIP towers run as LLaVA-NeXT runs them: last block
removed, no pooling head, last hidden state. Stage-1 outputs (``mm_projector.bin`` only) load on
top of their base LM (``_name_or_path``, or ``base=``). A fuser saved as ``model.mm_projector.0``
(MMFuser's LLaVA-1.5 checkpoints) is recognised by its weights: see mmfuser_original.py; so is
vMLLM's ``ProjectBlock`` (vmllm_original.py), whose towers all come from ``mm_vision_tower``.
ConvLLaVA's checkpoints (a ConvNeXt ``mm_vision_tower``) read the tower from that directory when it
holds weights, as the original's ``delay_load`` does, and else from the checkpoint's copy; its
``mm_vision_select_layer: -2`` pops the last block of the last stage.

The tokenizer of these checkpoints has no ``<image>`` token: prompts are split at the tag and
LLaVA's placeholder id -200 goes between the pieces, as ``tokenizer_image_token`` does.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..connectors.connector import ConnectorConfig
from ..connectors.projectors import PROJECTORS, projector_type
from ..errors import CheckpointError, ConfigError
from ..hub import resolve_directory
from ..imaging.processor import ImageConfig
from ..model.lm_config import lm_fields
from ..model.packing import FramesConfig
from ..tensor_files import KeyMap, Source, weight_files
from ..towers.base import TowerConfig, family_of, levels_of
from ..towers.presets import resolve_tower
from . import mlcd_seg_original, mmfuser_original, vmllm_original
from .opened import Layout, Opened, lm_config, load_tokenizer

IMAGE_TOKEN_INDEX = -200
LM_TYPES = {"llava_qwen": "qwen2", "llava_llama": "llama", "llava_mistral": "mistral"}
ARCHITECTURES = {
    "LlavaQwenForCausalLM": "qwen2",
    "LlavaLlamaForCausalLM": "llama",
    "LlavaMistralForCausalLM": "mistral",
}
_MERGES = ("flat", "spatial", "spatial_unpad")


def is_original(raw: dict) -> bool:
    """``llava_*``, or ``llava`` / the bare LM's type with ``mm_vision_tower`` (releases edited for
    serving or for ``trust_remote_code``, as MLCD-Seg's hub copy is tagged ``qwen2``)."""
    kind = raw.get("model_type")
    return kind in LM_TYPES or (kind in ("llava", *LM_TYPES.values()) and "mm_vision_tower" in raw)


def lm_type(raw: dict, where: Path) -> str:
    if raw.get("model_type") in LM_TYPES:
        return LM_TYPES[raw["model_type"]]
    if raw.get("model_type") in LM_TYPES.values():
        return raw["model_type"]
    for arch in raw.get("architectures") or []:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    raise CheckpointError(
        f"{where}: cannot tell the language model: architectures {raw.get('architectures')}"
    )


def read_lm(directory: Path, raw: dict) -> dict:
    """The LM's config fields: every field of config.json but LLaVA's own, read by the LM's config
    class (model/lm_config.py), so ``rope_theta``/``rope_scaling`` arrive as transformers reads them."""
    where = directory / "config.json"
    try:
        return lm_fields(raw, lm_type(raw, where))
    except ConfigError as err:
        raise CheckpointError(f"{where}: {str(err).removeprefix('lm config: ')}") from None


def infer_template(raw: dict, kind: str, tokenizer) -> tuple[str | None, str | None]:
    """(template, why) for an original checkpoint, whose config never names its chat format: the
    one its family was finetuned with (LLaVA-NeXT/MLCD ``--version``). Qwen2: ``qwen_1_5``
    (MLCD-LLaVA-NeXT, MLCD-Embodied, LLaVA-NeXT/OneVision Qwen). Llama: ``llama3`` when the
    tokenizer has Llama-3's header tokens (LLaVA-NeXT/vMLLM Llama-3), else ``vicuna_v1`` (LLaVA-1.5,
    MMFuser, ConvLLaVA). Mistral's ``mistral_instruct`` is not a fovea template: (None, None)."""
    layout = raw.get("model_type")
    if kind == "qwen2":
        return "qwen_1_5", f"inferred from the {layout} layout: Qwen2 LLaVA models are finetuned with it"
    if kind == "llama":
        llama3 = tokenizer is not None and "<|start_header_id|>" in tokenizer.get_vocab()
        name = "llama3" if llama3 else "vicuna_v1"
        why = "has Llama-3's header tokens" if llama3 else "has no Llama-3 header tokens (LLaVA-1.5 style)"
        return name, f"inferred from the {layout} layout, whose tokenizer {why}"
    return None, None


def tower_spec(raw: dict, where: Path, override: str | None) -> tuple[TowerConfig, dict, str]:
    """(tower config as LLaVA-NeXT runs it, image defaults, where its weights live)."""
    name = override or raw.get("mm_vision_tower") or raw.get("vision_tower")
    if not name:
        raise CheckpointError(f"{where}: no mm_vision_tower field")
    try:
        preset = resolve_tower(name)
    except ConfigError as err:
        raise CheckpointError(
            f"{where}: mm_vision_tower {name!r} is neither a known tower nor a local directory ({err})"
        ) from None
    config = TowerConfig(hf_config=dict(preset.tower["hf_config"]))
    hf = family_of(config).llava_runs(config.hf_config, raw.get("mm_vision_select_layer"))
    return TowerConfig(hf_config=hf), preset.image, name


def connector_spec(raw: dict, tower: TowerConfig, where: Path, shapes: dict | None = None) -> ConnectorConfig:
    """`shapes`: the checkpoint's ``model.mm_projector.*`` shapes (a fuser saved there, e.g.
    MMFuser's, is recognised by them)."""
    selected = mmfuser_original.select_layers(raw.get("mm_vision_select_layer", -1), where)
    feature = raw.get("mm_vision_select_feature", "patch")
    levels = levels_of(tower)
    hidden, tower_width = len(levels), levels[-1].width
    sliced = feature.startswith(("slicefour_", "slice_m25811_f6_"))
    if sliced and len(selected) != 1:
        raise CheckpointError(f"{where}: mm_vision_select_layer {selected} with {feature!r} must be one int")
    if not family_of(tower).llava_selects:
        layers = [-1]  # LLaVA-NeXT's SigLIP and ConvLLaVA's ConvNeXt towers: the last state
    elif feature.startswith("slicefour_"):
        step = hidden // 4
        layers = list(range(step + selected[0], hidden, step))
    elif feature.startswith("slice_m25811_f6_"):
        layers = [-2, -5, -8, -11, 6]
    else:
        layers = selected
    kind = feature.removeprefix("slicefour_").removeprefix("slice_m25811_f6_")
    if kind not in ("patch", "cls_patch"):
        raise CheckpointError(f"{where}: unsupported mm_vision_select_feature {feature!r}")
    projector = raw.get("mm_projector_type", "linear")
    try:
        projector_type(projector)
    except ConfigError:
        raise CheckpointError(
            f"{where}: unsupported mm_projector_type {projector!r} ({', '.join(PROJECTORS)})"
        ) from None
    keep_cls = kind == "cls_patch" and tower.cls_token
    if vmllm_original.detect(shapes or {}):
        return ConnectorConfig(**vmllm_original.connector_fields(raw, tower, shapes, selected, where))
    layout = mmfuser_original.detect(shapes or {})
    if layout is None:
        return ConnectorConfig(layers=layers, keep_cls=keep_cls, projector=projector)
    layout.check(layers, tower_width, shapes, where)
    if keep_cls:
        raise CheckpointError(
            f"{where}: mm_vision_select_feature {feature!r}: the {layout.name} fuser needs 'patch'"
        )
    return ConnectorConfig(layers=layers, fuser=dict(layout.fuser), projector=projector)


def image_spec(raw: dict, defaults: dict, where: Path) -> tuple[ImageConfig, str]:
    mode = raw.get("image_aspect_ratio") or "square"
    merge = raw.get("mm_patch_merge_type") or "flat"
    if merge not in _MERGES:
        raise CheckpointError(f"{where}: unsupported mm_patch_merge_type {merge!r} ({', '.join(_MERGES)})")
    pinpoints = raw.get("image_grid_pinpoints")
    if isinstance(pinpoints, list):
        pinpoints = [[int(h), int(w)] for w, h in pinpoints]  # LLaVA-NeXT lists are (width, height)
    try:
        image = ImageConfig(
            **defaults, mode=mode, grid_pinpoints=pinpoints if mode.startswith("anyres") else None
        )
    except ValueError as err:
        raise CheckpointError(f"{where}: image settings: {err}") from None
    return image, merge


def frames_spec(raw: dict, merge: str, where: Path) -> FramesConfig:
    """How the original pools and separates frames: ``mm_spatial_pool_mode`` (the train default,
    bilinear, when absent) and ``mm_newline_position`` (the model code's default, one_token, when
    absent; a ``flat`` merge adds no newline at all). The stride is 2 whatever
    ``mm_spatial_pool_stride`` says: LLaVA-NeXT's forward calls ``get_2dPool`` with its default."""
    position = raw.get("mm_newline_position") or "one_token"
    try:
        return FramesConfig(
            pool=raw.get("mm_spatial_pool_mode") or "bilinear",
            newline="no_token" if merge == "flat" else position,
        )
    except ValueError as err:
        field = "mm_spatial_pool_mode" if str(err).startswith("pool") else "mm_newline_position"
        raise CheckpointError(f"{where}: {field}: {str(err).split(': ', 1)[1]}") from None


def read_config(
    directory: Path, raw: dict, tokenizer, tower_override: str | None = None, lm: dict | None = None
):
    """fovea's config for an original checkpoint; `lm`: its `read_lm` fields when already read."""
    from ..model.config import VLMConfig

    where = directory / "config.json"
    tower, image_defaults, _ = tower_spec(raw, where, tower_override)
    shapes = own_shapes(directory, (mmfuser_original.PREFIX, mlcd_seg_original.SAM))
    connector = connector_spec(raw, tower, where, shapes)
    image, merge = image_spec(raw, image_defaults, where)
    per_layer = 1 if connector.fuser_type != "concat" else len(connector.layers)
    tower_width = levels_of(tower)[-1].width
    width = tower_width * per_layer
    if raw.get("mm_hidden_size") not in (None, width, tower_width):
        raise CheckpointError(
            f"{where}: mm_hidden_size {raw['mm_hidden_size']} does not fit the tower (width {width})"
        )
    token_id = IMAGE_TOKEN_INDEX
    if tokenizer is not None and "<image>" in tokenizer.get_vocab():
        token_id = tokenizer.convert_tokens_to_ids("<image>")
    lm = lm if lm is not None else read_lm(directory, raw)
    template, origin = infer_template(raw, lm["model_type"], tokenizer)
    return VLMConfig(
        tower=tower,
        connector=connector,
        lm=lm,
        template=template,
        template_origin=origin,
        image=image,
        image_token_id=token_id,
        merge=merge,
        newline=merge == "spatial_unpad",
        frames=frames_spec(raw, merge, where),
        max_length=raw.get("tokenizer_model_max_length"),
        seg=mlcd_seg_original.seg_config(shapes, tokenizer, where)
        if mlcd_seg_original.detect(shapes)
        else None,
    )


def _is_vmllm(model_keys: set[str]) -> bool:
    return "connector.fuser.enhance.low.query.weight" in model_keys


def _is_convnext(model_keys: set[str]) -> bool:
    return "tower.model.encoder.stages.0.layers.0.dwconv.weight" in model_keys


def key_map(model_keys: set[str], tower_layers: int) -> KeyMap:
    """Original checkpoint key -> fovea key."""

    fuser = mmfuser_original.of_model(model_keys)
    vmllm = _is_vmllm(model_keys)
    iou_depth = (
        2 + sum(k.startswith("seg.sam.mask_decoder.iou_prediction_head.layers.") for k in model_keys) // 2
    )
    seg = mlcd_seg_original.key_map(iou_depth)

    def mapped(key: str) -> str | None:
        if key.startswith((mlcd_seg_original.SAM, mlcd_seg_original.PROJECTION)):
            return seg(key)
        if vmllm and key.startswith("model.vision_tower."):
            return None  # the original reloads every tower from mm_vision_tower
        if key.startswith("model.vision_tower.vision_tower."):
            return tower_key(key.removeprefix("model.vision_tower.vision_tower."), model_keys, tower_layers)
        if key.startswith("model.mm_projector."):
            if vmllm:
                return vmllm_original.projector_key(key.removeprefix("model.mm_projector."))
            if fuser is not None:
                return fuser.key(key.removeprefix("model.mm_projector."))
            return "connector.projector." + key.removeprefix("model.mm_projector.")
        if key == "model.image_newline":
            return "image_newline"
        if key.startswith("model.vision_resampler."):
            raise CheckpointError(f"vision resamplers are not supported ({key})")
        if key.endswith(".inv_freq"):
            return None
        if key.startswith("model."):
            return "lm." + key
        if key.startswith("lm_head."):
            return "lm." + key
        return key

    return mapped


_LAYER = re.compile(r"encoder\.layers\.(\d+)\.")
_STAGE_BLOCK = re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.")


def tower_key(rest: str, model_keys: set[str], tower_layers: int) -> str | None:
    """A tower key (transformers naming, with or without ``vision_model.``) -> fovea key; None for
    parts LLaVA-NeXT does not run (SigLIP's removed last block and pooling head, text towers)."""
    rest = rest if f"tower.model.{rest}" in model_keys else rest.removeprefix("vision_model.")
    layer = _LAYER.search(rest)
    if layer and int(layer.group(1)) >= tower_layers:
        return None
    if rest.startswith("layernorm.") and _is_convnext(model_keys):
        return None  # ConvNeXt's pooled LayerNorm: ConvLLaVA never runs it (and drops it on save)
    block = _STAGE_BLOCK.match(rest)
    stage_kept = block and f"tower.model.encoder.stages.{block[1]}.layers.0.dwconv.weight" in model_keys
    if stage_kept and f"tower.model.{rest}" not in model_keys:
        return None  # a block of a stage the model has, but not the block: what select -2 pops
    if rest.startswith(("head.", "text_model.", "text_projection", "visual_projection", "logit_")):
        return None
    if rest.endswith("position_ids") and f"tower.model.{rest}" not in model_keys:
        return None
    return f"tower.model.{rest}"


def sources(
    directory: Path,
    raw: dict,
    model_keys: set[str],
    tower_layers: int,
    base: str | None,
    tower: str | None = None,
) -> list[Source]:
    """Where every part's weights come from: the checkpoint, and for what it lacks, the tower
    directory (`tower`, else ``mm_vision_tower``) and (stage-1 outputs) the base LM."""

    own, vmllm = _own_files(directory), _is_vmllm(model_keys)
    keys = _keys_of(own)
    tower_name = tower or raw.get("mm_vision_tower") or raw.get("vision_tower")
    repo = _tower_repo_first(model_keys, tower_name)
    mapping = key_map(model_keys, tower_layers)
    found = [Source(own, _without_tower(mapping) if repo else mapping)] if own else []
    if repo or vmllm or not any(k.startswith("model.vision_tower.") for k in keys):
        tower_dir = repo or resolve_directory(tower_name)
        tower_map = _tower_prefix_map(model_keys, tower_layers)
        if vmllm:
            tower_map = lambda key, inner=tower_map: vmllm_original.tower_key(key, inner)  # noqa: E731
        found.append(Source(weight_files(tower_dir), tower_map))
    if not any(k.startswith("model.layers.") for k in keys):
        base_name = base or raw.get("_name_or_path")
        if not base_name or Path(base_name).resolve() == directory.resolve():
            raise CheckpointError(
                f"{directory}: holds no language-model weights; pass base=DIR of the base LM"
            )
        found.append(Source(weight_files(resolve_directory(base_name)), key_map(model_keys, tower_layers)))
    return found


def _tower_repo_first(model_keys: set[str], tower_name: str) -> Path | None:
    """ConvLLaVA builds its tower with ``delay_load`` and reads it from ``mm_vision_tower``: when that
    directory holds weights, they win over any copy in the checkpoint (the directory, else None)."""

    if not _is_convnext(model_keys):
        return None
    try:
        directory = resolve_directory(tower_name)
        return directory if weight_files(directory) else None
    except CheckpointError:
        return None


def _without_tower(inner: KeyMap) -> KeyMap:
    return lambda key: None if key.startswith("model.vision_tower.") else inner(key)


def attach(model, raw: dict, tower: str | None) -> None:
    """What a fuser reads from the tower's directory besides weights (vMLLM's text tokenizer)."""
    if _is_vmllm(set(model.state_dict())):
        vmllm_original.attach(model, tower or raw.get("mm_vision_tower") or raw.get("vision_tower"))


def _own_files(directory: Path) -> list[Path]:
    projector = directory / "mm_projector.bin"
    try:
        files = weight_files(directory)
    except CheckpointError:
        files = []
    if projector.is_file() and projector not in files:
        files.append(projector)
    return files


def own_shapes(directory: Path, prefixes: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes of the checkpoint's own tensors under `prefixes` (headers only): ``model.mm_projector.*``
    tells a fuser, ``model.sam.*`` MLCD-Seg's SAM."""
    from ..tensor_files import TensorFile

    shapes = {}
    for file in _own_files(directory):
        with TensorFile(file) as handle:
            for key in handle.keys():
                if key.startswith(prefixes):
                    shapes[key] = handle.shape(key)
    return shapes


def _keys_of(files: list[Path]) -> set[str]:
    from ..tensor_files import TensorFile

    keys: set[str] = set()
    for file in files:
        with TensorFile(file) as handle:
            keys.update(handle.keys())
    return keys


def _tower_prefix_map(model_keys: set[str], tower_layers: int) -> KeyMap:
    return lambda key: tower_key(key, model_keys, tower_layers)


def _read(directory: Path, raw: dict, base: str | None, tower: str | None):
    fields = read_lm(directory, raw)  # read once: the tokenizer is given the LM's config too
    tokenizer = load_tokenizer(
        directory, lm_config(directory, fields), fallback=base or raw.get("_name_or_path")
    )
    return read_config(directory, raw, tokenizer, tower, fields), tokenizer


def _sources(opened: Opened, model) -> list[Source]:
    keys = set(model.state_dict())
    return sources(opened.directory, opened.raw, keys, model.tower.num_layers, opened.base, opened.tower)


LAYOUT = Layout(is_original, _read, _sources, lambda opened, model: attach(model, opened.raw, opened.tower))
