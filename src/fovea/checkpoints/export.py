"""`fovea convert`: any readable checkpoint -> fovea's format or transformers' LlavaNext layout.

Conversion streams: the source is checked from its headers against the model's names and shapes
(nothing loaded), then tensors are read one at a time, renamed, cast, and written into output
shards of at most `max_shard_size` bytes. Peak memory is about one output shard, never the model.
The output is written to ``DST.partial`` and renamed at the end, so a failed run leaves no
half-written model behind.

Nothing convert did not create is ever deleted: ``DST.partial`` carries a marker file written
first, and only a marked one is removed; ``overwrite`` replaces DST only when it is a model
checkpoint (a flat directory whose ``config.json`` names a model); a DST that is, contains or lies
inside one of the inputs is refused before anything is written.

``--to hf`` writes what transformers 5 writes for ``LlavaNextForConditionalGeneration``: its
``config.json``, safetensors with its key names, a tokenizer with an ``<image>`` token (added,
with an embedding row, when the source tokenizer has none), ``processor_config.json`` and a chat
template. Architectures LlavaNext cannot express (another projector, a fuser, a non-AnyRes image
mode, ...) are refused with the part named.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..tensor_files import INDEX, plan_load, read_planned
from ..towers.base import family_of
from .fovea_format import FORMAT
from .jinja import chat_template
from .loader import open_checkpoint

logger = logging.getLogger(__name__)

_RESAMPLE_IDS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}
PARTIAL_MARKER = ".fovea-partial"
"""Written first into ``DST.partial``: only a directory holding it is fovea's to delete."""


@dataclass
class Report:
    destination: Path
    tensors: int = 0
    bytes: int = 0
    shards: int = 0
    notes: list[str] = field(default_factory=list)


class ShardWriter:
    """Collects tensors and writes a safetensors shard whenever `max_bytes` would be exceeded."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.size = 0
        self.files: list[tuple[str, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.size + nbytes > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"shard-{len(self.files) + 1:05d}.safetensors"
        save_file(self.pending, self.directory / name, metadata={"format": "pt"})
        self.files.append((name, list(self.pending)))
        self.pending, self.size = {}, 0

    def close(self) -> int:
        """Final names (model.safetensors, or model-i-of-n + index); returns the shard count."""
        self.flush()
        n = len(self.files)
        final = (
            ["model.safetensors"]
            if n == 1
            else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        weight_map = {}
        for (tmp, keys), name in zip(self.files, final):
            (self.directory / tmp).rename(self.directory / name)
            weight_map.update({k: name for k in keys})
        if n > 1:
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            (self.directory / INDEX).write_text(json.dumps(index, indent=2))
        return n


def convert(
    source: str | Path,
    destination: str | Path,
    *,
    to: str = "hf",
    dtype: torch.dtype | None = None,
    max_shard_size: int = 2 * 1024**3,
    base: str | None = None,
    tower: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Report:
    """Convert `source` (any layout fovea reads) into `destination`; see the module docstring."""
    if to not in ("hf", "fovea"):
        raise ConfigError(f"unknown target format {to!r}; expected hf or fovea")
    dest = Path(destination)
    work = dest.with_name(dest.name + ".partial")
    _refuse_overlap(dest, work, [p for p in (source, base, tower) if p and Path(p).exists()])
    _check_replaceable(dest, overwrite)
    _check_partial(work)
    opened = open_checkpoint(source, base=base, tower=tower)
    _refuse_overlap(dest, work, [opened.directory])  # a hub id resolves only now
    if to == "hf":
        refuse_inexpressible(opened.config)  # before touching any weight
    skeleton = opened.skeleton()
    opened.attach(skeleton)
    plans = plan_load(skeleton, opened.sources(skeleton))
    target = HFTarget(opened) if to == "hf" else None
    _start_partial(work)
    try:
        report = _write(opened, skeleton, plans, target, work, Report(dest), dtype, max_shard_size, progress)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # ours: marked and created by this run
        raise
    _check_replaceable(dest, overwrite)  # again: DST may have changed during a long conversion
    (work / PARTIAL_MARKER).unlink()
    if dest.exists():
        shutil.rmtree(dest)  # an empty directory or a checkpoint, checked just above
    work.rename(dest)
    return report


def _write(
    opened, skeleton, plans, target, work: Path, report: Report, dtype, max_shard_size, progress
) -> Report:
    writer = ShardWriter(work, max_shard_size)
    rename: Callable[[str], str] = target.rename if target else (lambda k: k)
    bar = tqdm(total=len(plans), disable=not progress, desc="convert", unit="tensor")
    for plan, tensor in read_planned(plans, dtype):
        name = rename(plan.target)
        writer.add(name, target.adjust(name, tensor) if target else tensor)
        bar.update()
    bar.close()
    report.shards, report.tensors, report.bytes = writer.close(), len(plans), writer.total
    if target:
        target.write_metadata(work, report)
    else:
        _write_fovea_metadata(opened, work)
        skeleton.connector.fuser.save_files(work)
    return report


# -- what convert may write over or delete -----------------------------------------------------


def _refuse_overlap(dest: Path, work: Path, inputs: list) -> None:
    """ConfigError when DST (or DST.partial) is, contains or lies inside an input directory."""
    for output in (dest, work):
        out = output.resolve()
        for item in inputs:
            src = Path(item).resolve()
            relation = "is" if out == src else "contains" if out in src.parents else None
            relation = relation or ("lies inside" if src in out.parents else None)
            if relation:
                raise ConfigError(
                    f"{output}: the destination {relation} the source {item}; choose a directory outside it"
                )


def _check_replaceable(dest: Path, overwrite: bool) -> None:
    """DST may be new or an empty directory; with `overwrite`, also a checkpoint (see below)."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        kind = "a symbolic link" if dest.is_symlink() else "a file"
        raise ConfigError(f"{dest}: exists and is {kind}, not a directory; choose another destination")
    above = next(p for p in dest.absolute().parents if p.exists())
    if not above.is_dir():
        raise ConfigError(f"{dest}: {above} is a file, not a directory; choose another destination")
    if not dest.exists() or not any(dest.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{dest}: exists and is not empty (choose another directory or overwrite)")
    if not _is_checkpoint(dest):
        raise ConfigError(
            f"{dest}: not a model checkpoint (a flat directory whose config.json names a model), "
            "so overwrite leaves it alone; choose another destination"
        )


def _is_checkpoint(directory: Path) -> bool:
    """What overwrite may delete: config.json naming a model (fovea's format or a transformers
    model_type) and no subfolders; a folder holding folders is a workspace, not a checkpoint."""
    try:
        raw = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    names_model = isinstance(raw, dict) and (raw.get("format") == FORMAT or "model_type" in raw)
    return names_model and not any(p.is_dir() for p in directory.iterdir())


def _check_partial(work: Path) -> None:
    """A leftover ``DST.partial`` is ours to delete only as a real directory holding the marker."""
    if not (work.exists() or work.is_symlink()):
        return
    if work.is_symlink() or not work.is_dir() or not (work / PARTIAL_MARKER).is_file():
        raise ConfigError(
            f"{work}: exists and was not made by fovea convert (no {PARTIAL_MARKER}); "
            "move it away or choose another destination"
        )


def _start_partial(work: Path) -> None:
    """Replace a marked leftover of an interrupted run by a fresh, marked ``DST.partial``."""
    _check_partial(work)
    if work.exists():
        shutil.rmtree(work)
    try:
        work.mkdir(parents=True)
    except OSError as err:
        raise ConfigError(f"{work}: cannot create the output directory: {err.strerror or err}") from None
    (work / PARTIAL_MARKER).write_text("written by fovea convert; deleted when the conversion finishes\n")


def _write_fovea_metadata(opened, work: Path) -> None:
    from .. import __version__
    from ..config import to_dict

    if opened.tokenizer is not None:
        opened.tokenizer.save_pretrained(str(work))
    payload = {"format": FORMAT, "fovea_version": __version__, "model": to_dict(opened.config)}
    (work / "config.json").write_text(json.dumps(payload, indent=2))


class HFTarget:
    """Names, vocabulary and metadata of transformers' LlavaNext layout for one fovea config."""

    def __init__(self, opened):
        self.config = opened.config
        refuse_inexpressible(self.config)
        if opened.tokenizer is None:
            raise ConfigError("the source has no tokenizer; transformers' processor needs one")
        self.tokenizer = opened.tokenizer
        if "<image>" not in self.tokenizer.get_vocab():
            self.tokenizer.add_tokens(["<image>"], special_tokens=True)
        self.image_id = self.tokenizer.convert_tokens_to_ids("<image>")
        self.vocab = int(self.config.lm["vocab_size"])
        # A vocabulary without a free row for <image> grows to the next multiple of 64 (as
        # transformers' own conversions do); new input rows are the mean embedding, new output
        # rows zero, so no existing logit changes. A tied LM shares one matrix: its new rows are
        # zero, else the mean row would give the new ids (<image>, padding) logits of their own.
        self.new_vocab = self.vocab if self.image_id < self.vocab else -(-(self.image_id + 1) // 64) * 64

    def rename(self, key: str) -> str:
        for old, new in _HF_NAMES:
            if key.startswith(old):
                return new + key[len(old) :]
        raise ConfigError(f"no transformers LlavaNext name for {key!r}")

    def adjust(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        extra = self.new_vocab - self.vocab
        if extra <= 0 or name not in (
            "language_model.model.embed_tokens.weight",
            "language_model.lm_head.weight",
        ):
            return tensor
        tied = bool(self.config.lm.get("tie_word_embeddings", False))
        if name.endswith("embed_tokens.weight") and not tied:
            rows = tensor.float().mean(0, keepdim=True).to(tensor.dtype).expand(extra, -1)
        else:
            rows = tensor.new_zeros(extra, tensor.shape[1])
        return torch.cat([tensor, rows])

    def write_metadata(self, work: Path, report: Report) -> None:
        from transformers import LlavaNextConfig, LlavaNextProcessor
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        cfg, tower = self.config, self.config.tower
        layers = cfg.connector.layers
        text = {**cfg.lm, "vocab_size": self.new_vocab}
        hf = LlavaNextConfig(
            vision_config=dict(tower.hf_config),
            text_config=text,
            image_token_index=self.image_id,
            vision_feature_layer=layers[0] if len(layers) == 1 else list(layers),
            vision_feature_select_strategy="default" if tower.cls_token else "full",
            image_grid_pinpoints=[list(p) for p in cfg.image.pinpoints],
            projector_hidden_act=cfg.connector.projector_act,
            multimodal_projector_bias=cfg.connector.projector_bias,
            tie_word_embeddings=bool(cfg.lm.get("tie_word_embeddings", False)),
        )
        hf.architectures = ["LlavaNextForConditionalGeneration"]
        hf.save_pretrained(work)
        image = cfg.image
        crop = image.resize == "shortest_edge_crop"
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": image.size} if crop else {"height": image.size, "width": image.size},
            crop_size={"height": image.size, "width": image.size},
            do_center_crop=crop,
            resample=_RESAMPLE_IDS[image.resample],
            image_mean=list(image.mean),
            image_std=list(image.std),
            image_grid_pinpoints=[list(p) for p in image.pinpoints],
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=self.tokenizer,
            patch_size=int(tower.hf_config.get("patch_size", 14)),
            vision_feature_select_strategy=hf.vision_feature_select_strategy,
            num_additional_image_tokens=1 if tower.cls_token else 0,
            chat_template=chat_template(cfg.template) if cfg.template else cfg.chat_template,
        )
        processor.save_pretrained(work)
        if image.alpha == "drop":
            report.notes.append(
                "transformers' processor composites transparent images onto white; this model was set up "
                "to drop alpha (PIL convert), so RGBA inputs will differ slightly"
            )
        if family_of(tower).export_note:
            report.notes.append(family_of(tower).export_note)


_HF_NAMES = [
    ("tower.model.", "vision_tower."),
    ("connector.projector.0.", "multi_modal_projector.linear_1."),
    ("connector.projector.2.", "multi_modal_projector.linear_2."),
    ("lm.model.", "language_model.model."),
    ("lm.lm_head.", "language_model.lm_head."),
    ("image_newline", "image_newline"),
]


def refuse_inexpressible(config) -> None:
    """ConfigError naming the first part transformers' LlavaNext cannot express."""
    problems = [
        (
            family_of(config.tower).grid_kind != "vit",
            f"tower type {config.tower.model_type!r} (LlavaNext reads token sequences of a ViT; this "
            "tower's hidden states are feature maps)",
        ),
        (
            config.connector.fuser_type != "concat",
            f"fuser {config.connector.fuser_type!r} (LlavaNext only concatenates layers)",
        ),
        (
            config.connector.projector != "mlp2x_gelu",
            f"projector {config.connector.projector!r} (LlavaNext has mlp2x_gelu only)",
        ),
        (
            config.connector.keep_cls,
            "connector.keep_cls (LlavaNext drops CLS or keeps a CLS-free tower whole)",
        ),
        (
            config.merge != "spatial_unpad" or not config.newline,
            f"merge {config.merge!r} (LlavaNext packs spatial_unpad with newlines)",
        ),
        (config.image.mode != "anyres", f"image mode {config.image.mode!r} (LlavaNext always uses AnyRes)"),
        (
            config.image.multi_image_mode not in (None, "anyres"),
            f"multi_image_mode {config.image.multi_image_mode!r}",
        ),
    ]
    for bad, what in problems:
        if bad:
            raise ConfigError(f"cannot export to transformers LlavaNext: {what}")
