"""`fovea pretrain train`: a vision encoder trained by cluster discrimination (UNICOM / MLCD).

Each image carries the L centres `fovea pretrain assign` gave it; the encoder's normalised
embedding is scored against the class centres by PartialFC (centres sharded over processes,
every positive and a fraction r of the negatives per step) under MLCD's loss or UNICOM's margin
softmax. The run is fovea's training engine (train/engine.py): accelerate DDP, bf16, gradient
checkpointing, atomic checkpoints, exact resume, progress, metrics and TensorBoard.

What accelerate does not hold is saved here: each process's shard of the centres with its
optimizer and scheduler (``partial_fc-RANK.pt`` in every checkpoint), so a resume needs the same
number of processes and says so otherwise. Negatives are drawn from the step number, so a resumed
run draws the same ones. An image that cannot be read is skipped, counted and named; its slot in
the batch is padding that the loss leaves out (every process's batch keeps one shape, as the
all-gather needs). The result is exported as a tower directory (encoder.py): ``OUT/tower``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..config import to_dict
from ..data.loader import made_ahead
from ..errors import CheckpointError, ConfigError, ImageError
from ..imaging.processor import ImageConfig, ImageProcessor
from ..threads import default_workers
from ..towers.base import VisionTower
from ..towers.presets import build_tower
from ..train.build import checkpoint_activations
from ..train.data_order import micro_batches
from ..train.engine import Position, StepLoop, StepResult, make_accelerator, resume
from ..train.parts import warmup_cosine
from .encoder import Encoder, export_tower
from .recipe import PretrainRecipe, check_pretrain_recipe
from .region_data import RegionData, stack_regions

logger = logging.getLogger(__name__)


@dataclass
class LabelledImages:
    """Image references in FEATS order and their labels: (N, L) int64, -1 = none."""

    refs: list
    labels: np.ndarray
    classes: int
    processor: ImageProcessor
    regions: RegionData | None = None
    """RICE's regions of each image (None: image-level training)."""

    def __len__(self) -> int:
        return len(self.refs)

    def item(self, i: int, epoch: int = 0):
        """(pixels (3, S, S), labels (L,), regions or None) or the reason the image was skipped;
        the epoch seeds which regions are drawn."""
        ref = self.refs[i]
        try:
            image = ref.load()
            pixels = self.processor([image]).pixels[0]
        except ImageError as err:
            return f"image {ref.id}: {err}"
        regions = None
        if self.regions is not None:
            regions = self.regions.item(ref.id, (image.height, image.width), epoch, i)
        return pixels, torch.from_numpy(self.labels[i]), regions


def load_data(recipe: PretrainRecipe, image: ImageConfig, grid: tuple[int, int]) -> LabelledImages:
    refs, labels, classes = read_data(recipe)
    regions = None
    if recipe.regions is not None:
        regions = RegionData(recipe.regions, image, grid, recipe.run.seed)
    return LabelledImages(refs, labels, classes, ImageProcessor(image), regions)


def read_data(recipe: PretrainRecipe) -> tuple[list, np.ndarray, int]:
    """The image references of FEATS, their labels (N, L) int64 and the number of classes; every
    mismatch between the two folders is one error naming both."""
    from .features import load_features

    spec = recipe.data
    feats = load_features(spec.features, vectors=False)
    if feats.refs is None:
        raise ConfigError(f"data.features: {spec.features} holds no image references (a bare .npy?)")
    labels_file = Path(spec.labels) / "labels.npy"
    if not labels_file.is_file():
        raise ConfigError(f"data.labels: {labels_file} does not exist (run `fovea pretrain assign`)")
    labels = np.load(labels_file, allow_pickle=False)
    if labels.ndim != 2 or len(labels) != len(feats.refs):
        raise ConfigError(
            f"data.labels: {labels_file} has shape {labels.shape}, expected ({len(feats.refs)}, L) for the "
            f"{len(feats.refs)} images of {spec.features}"
        )
    width = spec.labels_per_image or labels.shape[1]
    if width > labels.shape[1]:
        raise ConfigError(f"data.labels_per_image: {width}, but {labels_file} holds {labels.shape[1]}")
    labels = np.ascontiguousarray(labels[:, :width], dtype=np.int64)
    return feats.refs, labels, _classes(Path(spec.labels), labels)


def _classes(folder: Path, labels: np.ndarray) -> int:
    """The number of centres: assign.json records it; older folders fall back to the labels."""
    info = folder / "assign.json"
    recorded = json.loads(info.read_text()).get("centres") if info.is_file() else None
    return int(recorded) if recorded else int(labels.max()) + 1


def _make(data, micro: int, label_width: int, size: int, epoch: int, indices: list[int]) -> dict:
    """One micro-batch of `epoch` from its image indices (in a DataLoader worker, or here)."""
    return collate([data.item(i, epoch) for i in indices], micro, label_width, size, data.regions)


def collate(items: list, micro: int, label_width: int, size: int, regions: RegionData | None = None) -> dict:
    """A fixed-shape batch: skipped images become padding rows (valid False, labels -1)."""
    pixels = torch.zeros(micro, 3, size, size)
    labels = torch.full((micro, label_width), -1, dtype=torch.long)
    valid = torch.zeros(micro, dtype=torch.bool)
    skipped, region_items = [], [None] * micro
    for row, item in enumerate(items):
        if isinstance(item, str):
            skipped.append(item)
            continue
        pixels[row], labels[row], valid[row] = item[0], item[1], True
        region_items[row] = item[2]
    batch = {"pixels": pixels, "labels": labels, "valid": valid, "skipped": skipped}
    if regions is not None:
        batch["regions"] = stack_regions(region_items, regions.empty())
    return batch


def build_encoder(recipe: PretrainRecipe) -> tuple[Encoder, ImageConfig]:
    spec = recipe.encoder
    tower, defaults = _tower(spec)
    try:
        image = ImageConfig(**{**defaults, **spec.image, "mode": "square"})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"encoder.image: {err}") from None
    encoder = Encoder(tower, spec.embedding_dim)
    if recipe.regions is not None:
        encoder.add_regions(recipe.regions.attention)
    if spec.gradient_checkpointing:
        checkpoint_activations(encoder.tower.model)
    return encoder.train(), image


def _tower(spec) -> tuple[VisionTower, dict]:
    """The encoder's tower: a preset, with `tower_config` fields changed when the recipe gives some."""
    return build_tower(
        spec.tower, pretrained=spec.pretrained, weights=spec.weights, overrides=spec.tower_config
    )


def train_encoder(recipe: PretrainRecipe) -> Path:
    """Train (resuming where a previous run stopped); returns the exported tower directory."""
    from accelerate.utils import set_seed

    check_pretrain_recipe(recipe)
    out = Path(recipe.run.out_dir)
    tower_dir = out / "tower"
    if (tower_dir / "config.json").is_file():
        logger.info("already trained: %s", tower_dir)
        return tower_dir
    accelerator = make_accelerator(recipe.run)
    set_seed(recipe.run.seed)
    encoder, image = build_encoder(recipe)
    grid = (image.size // encoder.tower.patch_size,) * 2
    data = load_data(recipe, image, grid)
    _check_batch(recipe, accelerator.num_processes)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.json").write_text(json.dumps(to_dict(recipe), indent=2))
    if accelerator.log_with:
        accelerator.init_trackers("fovea-pretrain", config={"seed": recipe.run.seed})
    loop = _EncoderLoop.build(accelerator, recipe, encoder, data)
    position = resume(accelerator, out, loop.scheduler, loop.load_extra)
    loop.run(position, out)
    encoder = accelerator.unwrap_model(loop.model)
    if accelerator.is_main_process:
        _atomic_export(encoder, image, tower_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return tower_dir


def _check_batch(recipe: PretrainRecipe, world: int) -> None:
    optim = recipe.optim
    micro = optim.micro_batch_size or max(1, optim.batch_size // world)
    if optim.batch_size % (micro * world):
        raise ConfigError(
            f"optim.batch_size: {optim.batch_size} is not a multiple of micro_batch_size {micro} x "
            f"{world} processes"
        )


def _atomic_export(encoder: Encoder, image: ImageConfig, tower_dir: Path) -> None:
    tmp = tower_dir.with_name(tower_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_tower(encoder, image, tmp)
    tmp.rename(tower_dir)


class _EncoderLoop(StepLoop):
    """One optimizer step = `accum` micro-batches per process through the encoder and PartialFC."""

    name = "pretrain"

    @classmethod
    def build(cls, accelerator, recipe: PretrainRecipe, encoder: Encoder, data: LabelledImages):
        from .partial_fc import PartialFC

        optim, world = recipe.optim, accelerator.num_processes
        micro = optim.micro_batch_size or max(1, optim.batch_size // world)
        accum = optim.batch_size // (micro * world)
        per_epoch = max(1, len(data) // (micro * world)) // accum or 1
        total = optim.max_steps or max(1, math.ceil(optim.epochs * per_epoch))
        pfc = PartialFC(encoder.embedding_dim, data.classes, recipe.loss, seed=recipe.run.seed)
        pfc = pfc.to(accelerator.device)
        region_pfcs = _region_pfcs(recipe, encoder.embedding_dim, data.regions).to(accelerator.device)
        optimizer = _adamw(encoder.parameters(), optim.lr, optim.weight_decay)
        centre_params = [*pfc.parameters(), *region_pfcs.parameters()]
        centres = _adamw(centre_params, optim.centres_lr or optim.lr, optim.weight_decay)
        factor = warmup_cosine(total, optim.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        centres_scheduler = torch.optim.lr_scheduler.LambdaLR(centres, factor)
        accelerator.gradient_accumulation_steps = accum
        # BatchNorm (UNICOM's head) normalises over the global batch, as one process would; torch's
        # SyncBatchNorm runs on accelerators only, so CPU processes (gloo) keep per-process statistics
        if world > 1 and accelerator.device.type != "cpu":
            encoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(encoder)
        model, optimizer = accelerator.prepare(encoder, optimizer)
        loop = cls(
            accelerator,
            recipe.run,
            scheduler,
            [optimizer, centres],
            total,
            model=model,
            grad_clip=optim.grad_clip,
        )
        loop.schedulers.append(centres_scheduler)
        loop.recipe, loop.data, loop.pfc, loop.region_pfcs = recipe, data, pfc, region_pfcs
        loop.centres, loop.centres_scheduler = centres, centres_scheduler
        loop.micro, loop.accum, loop.size = micro, accum, data.processor.config.size
        return loop

    def batches(self, position: Position):
        """This process's micro-batches from `position`, decoded by `run.num_workers` DataLoader
        workers in the data order's exact sequence (data/loader.py), or here."""
        order = partial(
            micro_batches, len(self.data), micro=self.micro, world=self.acc.num_processes,
            rank=self.acc.process_index, seed=self.recipe.run.seed, start=(position.epoch, position.batch),
        )  # fmt: skip
        make = partial(_make, self.data, self.micro, self.data.labels.shape[1], self.size)
        workers = self.recipe.run.num_workers
        yield from made_ahead(order, make, default_workers() if workers is None else workers)

    def step(self, source, position: Position) -> StepResult:
        group = [next(source) for _ in range(self.accum)]
        for _, _, batch in group:
            for reason in batch["skipped"]:
                logger.warning("skipped: %s", reason)
        device, losses, parts = self.acc.device, [], {}

        def loss_of(k: int, batch: dict) -> torch.Tensor:
            step, regions = position.step * self.accum + k, batch.get("regions")
            with self.acc.autocast():
                out = self.model(batch["pixels"].to(device), None if regions is None else regions["visible"])
            embeddings = out if regions is None else out[0]
            loss = self.pfc(
                embeddings.float(), batch["labels"].to(device), step, valid=batch["valid"].to(device)
            )
            if regions is not None:
                loss = self._with_regions(loss, out[1], regions, step, parts)
            losses.append(float(loss.detach()))
            return loss

        self.accumulate(group, loss_of)
        local = torch.tensor(
            [sum(int(b["valid"].sum()) for _, _, b in group), sum(len(b["skipped"]) for _, _, b in group)],
            dtype=torch.float64, device=device,
        )  # fmt: skip
        samples, skipped = self.acc.reduce(local, reduction="sum").tolist()
        position.skipped += int(skipped)
        extra = {f"{name}_loss": sum(v) / len(v) for name, v in parts.items()}
        if self.data.regions is not None:
            extra["regions_outside_view"] = float(sum(b["regions"]["outside"] for _, _, b in group))
        return StepResult(sum(losses) / len(losses), {"samples": samples}, group[-1][:2], extra)

    def _with_regions(self, image_loss, regions: torch.Tensor, batch: dict, step: int, parts: dict):
        """The image loss weighted, plus each region loss (object, OCR) over the B·N region rows."""
        spec, device = self.recipe.regions, self.acc.device
        flat = regions.flatten(0, 1).float()  # (B·N, E)
        parts.setdefault("image", []).append(float(image_loss.detach()))
        total = spec.image_weight * image_loss
        for name, pfc in self.region_pfcs.items():
            labels = batch[name].flatten(0, 1).to(device)  # object (B·N, 1), ocr (B·N, M)
            loss = pfc(flat, labels, step, valid=batch[f"{name}_valid"].flatten().to(device))
            parts.setdefault(name, []).append(float(loss.detach()))
            total = total + getattr(spec, f"{name}_weight") * loss
        return total

    def save_extra(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "world": self.acc.num_processes,
            "centres": self.pfc.state_dict(),
            "region_centres": self.region_pfcs.state_dict(),
            "optimizer": self.centres.state_dict(),
            "scheduler": self.centres_scheduler.state_dict(),
        }
        torch.save(state, folder / f"partial_fc-{self.acc.process_index:05d}.pt")

    def load_extra(self, folder: Path) -> None:
        path = folder / f"partial_fc-{self.acc.process_index:05d}.pt"
        if not path.is_file():
            raise CheckpointError(
                f"{folder}: no class centres for process {self.acc.process_index} ({path.name})"
            )
        state = torch.load(path, weights_only=True, map_location=self.acc.device)
        if state["world"] != self.acc.num_processes:
            raise CheckpointError(
                f"{folder}: written by {state['world']} processes, resumed with {self.acc.num_processes}; "
                f"resume with {state['world']} (the class centres are sharded over processes)"
            )
        self.pfc.load_state_dict(state["centres"])
        self.region_pfcs.load_state_dict(state.get("region_centres", {}))
        self.centres.load_state_dict(state["optimizer"])
        self.centres_scheduler.load_state_dict(state["scheduler"])


def _region_pfcs(recipe: PretrainRecipe, dim: int, regions: RegionData | None) -> torch.nn.ModuleDict:
    """RICE's region centres: "object" (K region clusters) and "ocr" (the tokenizer's vocabulary),
    each sharded over processes by its own PartialFC, seeded apart from the image centres."""
    from .partial_fc import PartialFC

    pfcs = torch.nn.ModuleDict()
    if regions is None:
        return pfcs
    spec, seed = recipe.regions, recipe.run.seed
    if regions.object_classes is not None:
        pfcs["object"] = PartialFC(dim, regions.object_classes, spec.object_loss, seed=seed + 1)
    if regions.vocab is not None:
        pfcs["ocr"] = PartialFC(dim, regions.vocab, spec.ocr_loss, seed=seed + 2)
    return pfcs


def _adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and tables only, not on norms and biases."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999), eps=1e-8)
