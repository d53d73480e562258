"""Training recipes: YAML files validated into dataclasses (unknown keys are errors).

    model:      how to build the model (tower, LM, connector, image handling), or `init` from a checkpoint
    stages:     list of stages: data, template, which parts train at which learning rate, length
    run:        output directory, seed, precision, distributed engine, logging, checkpointing
    lora:       optional LoRA / QLoRA on the language model (and the tower)

See configs/*.yaml for the MLCD-LLaVA-NeXT recipes and the tiny ones the tests use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..config import apply_overrides, from_dict, load_yaml
from ..connectors.connector import ConnectorConfig
from .validate import check_recipe


@dataclass(kw_only=True)
class AddedStage:
    depth: int
    """Blocks of the new stage (ConvLLaVA: 6)."""
    width: int
    """Its channels (ConvLLaVA: 3072, twice the last stage's)."""


@dataclass(kw_only=True)
class ModelSpec:
    init: str | None = None
    """Start from this checkpoint (any layout fovea.load reads); the fields below are then unused."""
    tower: str | None = None
    """Tower preset, hub id or directory (see `fovea list`)."""
    tower_pretrained: bool = True
    tower_config: dict | None = None
    """A transformers vision config instead of a preset (random weights), e.g. for tiny models."""
    tower_add_stage: AddedStage | None = None
    """Grow the (ConvNeXt) tower by one stage before training, as ConvLLaVA's first stage does."""
    lm: str | None = None
    """Causal LM hub id or directory (pretrained weights and tokenizer)."""
    lm_config: dict | None = None
    """A transformers LM config instead (random weights, fovea's tiny tokenizer)."""
    tokenizer_corpus: list[str] = field(default_factory=list)
    """Extra text for the tiny tokenizer (with lm_config)."""
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    image: dict = field(default_factory=dict)
    """ImageConfig fields over the tower's preprocessing: mode, grid_pinpoints, alpha, ..."""
    template: str = "qwen_1_5"
    max_length: int | None = None
    gradient_checkpointing: bool = False
    compile: bool = False
    """torch.compile every tower and LM block in place (the classes each model names in
    ``_no_split_modules``, the blocks FSDP wraps too)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the pretrained parts are loaded in."""
    sam: str | None = None
    """A SAM checkpoint (transformers' SamModel layout, directory or hub id): adds MLCD-Seg's [SEG]
    token and mask path to the model (parts ``seg.sam.prompt_encoder``, ``seg.sam.mask_decoder``,
    ``seg.text2sam``; SAM's image encoder stays frozen). Unused when the model already segments."""

    def __post_init__(self) -> None:
        if self.init is None and (self.tower is None) == (self.tower_config is None):
            raise ValueError("model needs exactly one of tower or tower_config (or init)")
        if self.init is None and (self.lm is None) == (self.lm_config is None):
            raise ValueError("model needs exactly one of lm or lm_config (or init)")


@dataclass(kw_only=True)
class StageSpec:
    name: str
    data: str
    """A .json / .jsonl file of LLaVA records, or a .yaml mixture."""
    image_root: str | None = None
    template: str | None = None
    """Chat template for this stage (default: the model's)."""
    train: dict[str, float]
    """Part -> learning rate: tower, tower.embeddings, tower.layers.A-B, connector, lm,
    lm.embeddings, newline. Everything not listed is frozen."""
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    """Samples per optimizer step, over all processes and accumulation steps."""
    micro_batch_size: int | None = None
    """Samples per forward pass per process (default: batch_size / processes)."""
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    label_quirk: str | None = None
    image_mode: str | None = None
    """Override the image mode for this stage (e.g. square for alignment)."""
    merge: Literal["spatial_unpad", "spatial", "flat"] | None = None
    packing: bool = True
    """Lay each micro-batch's samples end to end in a few rows (data/packing.py): the same samples,
    loss and gradients as unpacked, without the padding. A segmenting model trains unpacked."""
    pack_tokens: int | None = None
    """Row budget when packing (default: the micro-batch's longest sample, so no row is longer
    than unpacked padding would make it)."""
    group_by_length: bool = False
    """Unpacked: micro-batches of similar lengths (chunks of the shuffled data sorted by length)."""
    group_by_modality: bool = False
    """Unpacked: micro-batches all images or all text, lengths grouped within, as LLaVA-NeXT's
    ``group_by_modality_length``."""


@dataclass(kw_only=True)
class LoraSpec:
    r: int = 64
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    lr: float = 2e-4
    """Learning rate of adapters whose part the stage does not list."""
    tower: bool = False
    """Also put LoRA on the tower's attention and MLP."""
    quantize: Literal["none", "4bit", "8bit"] = "none"
    """QLoRA: load the pretrained LM quantized (bitsandbytes, CUDA only). Every stage's final
    checkpoint has the adapters merged into the weights (loadable anywhere, no peft needed)."""


@dataclass(kw_only=True)
class RunSpec:
    out_dir: str = "runs/fovea"
    seed: int = 0
    precision: Literal["no", "bf16", "fp16"] = "no"
    distributed: Literal["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = "ddp"
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    num_workers: int | None = None
    """DataLoader workers that read, decode, tile and tokenize ahead of the step (default: what the
    machine has, `threads.default_workers`); 0 does it on the training thread."""
    progress: bool = True


@dataclass(kw_only=True)
class Recipe:
    model: ModelSpec
    stages: list[StageSpec]
    run: RunSpec = field(default_factory=RunSpec)
    lora: LoraSpec | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a recipe needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must differ: {names}")


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """A recipe from YAML with ``a.b=value`` overrides; relative data paths resolve against the file."""
    data = apply_overrides(load_yaml(path), list(overrides))
    recipe = from_dict(Recipe, data)
    base = Path(path).parent
    for stage in recipe.stages:
        if (
            not Path(stage.data).is_absolute()
            and not Path(stage.data).exists()
            and (base / stage.data).exists()
        ):
            stage.data = str(base / stage.data)
    check_recipe(recipe)
    return recipe
