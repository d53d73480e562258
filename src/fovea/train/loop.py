"""`fovea train`: run a recipe's stages with accelerate (one process, DDP, FSDP or DeepSpeed).

One optimizer step = `accum` micro-batches per process. The loss is the sum of token losses over
the whole step divided by the number of supervised tokens of the whole step (counted across
processes first), so the gradient does not depend on how samples are split over processes or
accumulation steps. Checkpoints (accelerate's full training state + the data position) are
written atomically every `save_every` steps; a restarted run continues from the newest one and
reaches the same weights as an uninterrupted run. A NaN/inf loss stops the run with a clear
error; bad records are skipped, counted and logged by id.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import to_dict
from ..data.dataset import SupervisedDataset, collate
from ..data.labels import IGNORE
from ..data.loader import made_ahead
from ..data.packing import packed_attention
from ..data.sources import RecordSource
from ..imaging.processor import ImageConfig, ImageProcessor
from ..model.varlen import varlen
from ..threads import default_workers
from .build import apply_lora, build_model, merge_lora
from .data_order import micro_batches
from .engine import Position, StepLoop, StepResult, atomic_save, make_accelerator, resume
from .parts import assign, describe, make_optimizer
from .recipe import Recipe, StageSpec
from .validate import check_files, check_parts_match, check_recipe, check_same_recipe

logger = logging.getLogger(__name__)


def train(recipe: Recipe) -> Path:
    """Run every stage (resuming where a previous run stopped); returns the final checkpoint."""
    from accelerate.utils import set_seed

    check_recipe(recipe)  # API callers may build a Recipe by hand
    accelerator = make_accelerator(recipe.run)
    check_files(recipe, accelerator.num_processes)  # every stage, before anything is written
    out = Path(recipe.run.out_dir)
    check_same_recipe(out, recipe)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.json").write_text(json.dumps(to_dict(recipe), indent=2))
    set_seed(recipe.run.seed)
    model = build_model(recipe.model, recipe.lora)
    check_parts_match(recipe, model)
    if accelerator.log_with:
        accelerator.init_trackers("fovea", config={"seed": recipe.run.seed, "stages": len(recipe.stages)})
    final = out
    for index, stage in enumerate(recipe.stages):
        final = out / f"stage-{index}-{stage.name}" / "final"
        if (final / "config.json").is_file():
            logger.info("stage %s already finished: %s", stage.name, final)
            model = _reload(final, recipe)
            continue
        model = run_stage(accelerator, recipe, model, stage, final.parent)
    accelerator.end_training()
    return final


def _reload(final: Path, recipe: Recipe):
    from ..checkpoints import load

    model = load(final).train()
    if recipe.lora is not None:
        apply_lora(model, recipe.lora)
    return model


def _apply_stage_settings(model, stage: StageSpec) -> None:
    if stage.image_mode is not None:
        fields = {**to_dict(model.config.image), "mode": stage.image_mode}
        model.config.image = ImageConfig(**fields)
        model.processor = ImageProcessor(model.config.image)
    if stage.merge is not None:
        model.config.merge = stage.merge


def run_stage(accelerator, recipe: Recipe, model, stage: StageSpec, stage_dir: Path):
    _apply_stage_settings(model, stage)
    dataset = SupervisedDataset(
        RecordSource(stage.data, recipe.run.seed),
        model,
        template=stage.template or recipe.model.template,
        image_root=stage.image_root,
        max_length=model.config.max_length,
        label_quirk=stage.label_quirk,
    )
    world = accelerator.num_processes
    micro = stage.micro_batch_size or max(1, stage.batch_size // world)
    accum = stage.batch_size // (micro * world)  # divides exactly: check_files made sure
    per_epoch = max(1, len(dataset) // (micro * world)) // accum or 1
    total = stage.max_steps or max(1, math.ceil(stage.epochs * per_epoch))
    rates = assign(model, stage.train, recipe.lora.lr if recipe.lora else None)
    for part, trainable, size, lrs in describe(model, rates):
        logger.info(
            "stage %s: %-14s %12s of %12s params train (lr %s)",
            stage.name,
            part,
            f"{trainable:,}",
            f"{size:,}",
            lrs,
        )
    optimizer, scheduler = make_optimizer(model, rates, stage.weight_decay, total, stage.warmup_ratio)
    accelerator.gradient_accumulation_steps = accum
    # The scheduler stays unprepared: accelerate would step it once per process per call.
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    position = resume(accelerator, stage_dir, scheduler)
    loop = _StageLoop(accelerator, recipe, stage, dataset, wrapped, optimizer, scheduler, micro, accum, total)
    loop.run(position, stage_dir)
    model = accelerator.unwrap_model(wrapped)
    accelerator.free_memory()
    if recipe.lora is not None:
        merge_lora(model)
    if accelerator.is_main_process:
        atomic_save(model, stage_dir / "final")
    accelerator.wait_for_everyone()
    if recipe.lora is not None and stage is not recipe.stages[-1]:
        apply_lora(model, recipe.lora)
    return model


class _StageLoop(StepLoop):
    """One stage of a LLaVA-style model: token cross-entropy over supervised tokens."""

    unit_rate = "tokens"

    def __init__(self, accelerator, recipe, stage, dataset, model, optimizer, scheduler, micro, accum, total):
        super().__init__(
            accelerator, recipe.run, scheduler, [optimizer], total, model=model, grad_clip=stage.grad_clip
        )
        self.recipe, self.stage, self.dataset, self.name = recipe, stage, dataset, stage.name
        self.micro, self.accum = micro, accum
        self.pad = dataset.model.tokenizer.pad_token_id or 0
        # packing (data/packing.py): a segmenting model's [SEG] states are read per row: unpacked
        self._pack = stage.packing and dataset.model.config.seg is None
        implementation = dataset.model.lm.config._attn_implementation or "eager"
        self._capacity, self._varlen = (
            packed_attention(implementation, stage.pack_tokens) if self._pack else (0, False)
        )

    def run(self, position: Position, stage_dir: Path) -> None:
        """The stage's steps; packed with sdpa, through fovea's varlen attention (model/varlen.py),
        for the backward too (gradient checkpointing recomputes the forward there)."""
        with varlen(self.dataset.model.lm) if self._varlen else nullcontext():
            super().run(position, stage_dir)

    def batches(self, position: Position):
        """This process's micro-batches from `position`: made ahead by `run.num_workers` DataLoader
        workers (data/loader.py), packed unless the stage says not (data/packing.py)."""
        grouped = self.stage.group_by_length or self.stage.group_by_modality
        lengths, images = _lengths(self.dataset) if grouped else (None, None)
        order = partial(
            micro_batches,
            len(self.dataset),
            micro=self.micro,
            world=self.acc.num_processes,
            rank=self.acc.process_index,
            seed=self.recipe.run.seed,
            start=(position.epoch, position.batch),
            lengths=lengths,
            modality=images if self.stage.group_by_modality else None,
        )
        make = partial(_make, self.dataset, self.pad, self._pack, self._capacity)
        workers = self.run_spec.num_workers
        yield from made_ahead(order, make, default_workers() if workers is None else workers)

    def step(self, source, position: Position) -> StepResult:
        """One optimizer step: the loss, (tokens, samples) seen by all processes, the position."""
        group = [next(source) for _ in range(self.accum)]
        for _, _, batch in group:
            for _, reason in batch["skipped"]:
                logger.warning("skipped: %s", reason)
        local = torch.tensor(
            [
                sum(int((b["labels"][:, 1:] != IGNORE).sum()) for _, _, b in group if b["size"]),
                sum(len(b["skipped"]) for _, _, b in group),
                sum(b["tokens"] for _, _, b in group if b["size"]),
                sum(b["size"] for _, _, b in group),
                sum(len(m) for _, _, b in group if b["size"] for m in b.get("masks", [])),
            ],
            dtype=torch.float64,
            device=self.acc.device,
        )
        supervised, skipped, seen, count, masks = self.acc.reduce(local, reduction="sum").tolist()
        position.skipped += int(skipped)
        token_losses, mask_losses = [], []

        def loss_of(k: int, batch: dict) -> torch.Tensor:
            token_sum, mask_sum = self.forward(batch)
            token_losses.append(token_sum)
            mask_losses.append(mask_sum)
            # accelerate divides by the accumulation steps; undo it, normalise by the step's tokens
            # (and a segmenting model's masks by the step's masks: MLCD-Seg's per-mask mean)
            scale = self.acc.num_processes * self.accum
            return token_sum * scale / max(supervised, 1.0) + mask_sum[0] * scale / max(masks, 1.0)

        self.accumulate(group, loss_of)
        loss_sum = torch.stack([t.detach() for t in token_losses]).sum()
        loss = float(self.acc.reduce(loss_sum, reduction="sum")) / max(supervised, 1.0)
        extra = {}
        if masks:
            sums = self.acc.reduce(
                torch.stack([torch.stack(m).detach() for m in mask_losses]).sum(0), reduction="sum"
            )
            mask_loss, bce, dices = (float(v) / masks for v in sums)
            extra = {"lm_loss": loss, "mask_bce": bce, "mask_dice": dices}
            loss += mask_loss
        return StepResult(loss, {"tokens": seen, "samples": count}, group[-1][:2], extra)

    def forward(self, batch: dict) -> tuple[torch.Tensor, tuple]:
        """Summed token cross-entropy of one micro-batch (0 with a graph if it is empty), and a
        segmenting model's summed mask losses (`seg.losses.mask_loss_sum`; zeros otherwise)."""
        zero = torch.zeros((), device=self.acc.device)
        if not batch["size"]:
            return sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad), (zero, zero, zero)
        device = self.acc.device
        seg = {"sam_images": batch["sam_images"]} if "masks" in batch else {}
        inputs = batch["inputs"]
        with self.acc.autocast():
            mask = inputs.attention_mask
            out = self.model(
                **inputs.replace(
                    input_ids=inputs.input_ids.to(device),
                    attention_mask=None if mask is None else mask.to(device),
                ),
                use_cache=False,  # no cache: with one, transformers would not read packed positions
                **seg,
            )
        labels = batch["labels"].to(device)
        token_sum = F.cross_entropy(
            out.logits[:, :-1].flatten(0, 1).float(),
            labels[:, 1:].flatten(),
            ignore_index=IGNORE,
            reduction="sum",
        )
        return token_sum, (_mask_sums(out.masks, batch, device) if seg else (zero, zero, zero))


def _make(
    dataset: SupervisedDataset, pad: int, pack: bool, capacity: int | None, epoch: int, indices: list[int]
) -> dict:
    """One micro-batch from its sample indices (in a DataLoader worker, or here)."""
    return collate([dataset[i] for i in indices], pad, pack, capacity)


def _mask_sums(predicted: list[list[torch.Tensor]], batch: dict, device) -> tuple:
    """Σ over the micro-batch's masks of the seg losses; each sample's targets grouped by image as
    the model groups its predictions (mask k belongs to image k mod images)."""
    from ..seg.losses import mask_loss_sum

    total = [torch.zeros((), device=device) for _ in range(3)]
    for per_image, masks, images in zip(predicted, batch["masks"], batch["sam_images"]):
        count = max(1, len(images))
        for i, logits in enumerate(per_image):  # each image's masks share its size
            if len(logits):
                sums = mask_loss_sum(logits, torch.stack(masks[i::count]).to(device))
                total = [t + s for t, s in zip(total, sums)]
    return tuple(total)


def _lengths(dataset: SupervisedDataset) -> tuple[list[int], list[bool]]:
    """Cheap length estimates (characters + images) for grouped sampling, and whether each sample
    has an image or video."""
    lengths, modality = [], []
    for i in range(len(dataset)):
        raw, _ = dataset.source.read(i)
        record = raw if isinstance(raw, dict) else {}
        text = json.dumps(record.get("conversations", ""))
        images = record.get("images", record.get("image"))
        count = len(images) if isinstance(images, list) else int(images is not None)
        lengths.append(len(text) // 4 + count * 500)
        modality.append(bool(count) or record.get("video") is not None)
    return lengths, modality
