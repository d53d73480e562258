"""The training engine every fovea trainer runs on: accelerate, checkpoints, resume, metrics, progress.

`fovea train` (train/loop.py, a LLaVA-style model in stages) and `fovea pretrain train`
(pretrain/train.py, a vision encoder by cluster discrimination) differ only in what one optimizer
step computes. Everything else is here, once:

* `make_accelerator`: one process, DDP, FSDP or DeepSpeed through accelerate, CPU processes with gloo;
* `StepLoop`: the step loop with a progress bar, metrics rows (`metrics.jsonl` and the trackers),
  a NaN/inf stop, and checkpoints every `save_every` steps written atomically
  (`checkpoints/step-N.tmp` renamed when complete) with accelerate's full state, the scheduler and
  the data position. A trainer whose state accelerate does not hold (PartialFC's per-process class
  centres) saves and loads it in `save_extra` / `load_extra`;
* `resume`: a restarted run continues from the newest complete checkpoint and reaches the same
  weights as an uninterrupted one (the data order is a function of the position, train/data_order.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import write_text_atomic
from ..errors import FoveaError
from .recipe import RunSpec

logger = logging.getLogger(__name__)


class TrainingDiverged(FoveaError):
    """The loss became NaN or infinite."""


@dataclass
class Position:
    step: int = 0
    epoch: int = 0
    batch: int = 0
    skipped: int = 0


@dataclass
class StepResult:
    """What one optimizer step reports: its loss, counts summed over processes (shown per second,
    e.g. tokens and samples), and the data position of its last micro-batch."""

    loss: float
    counts: dict[str, float]
    last: tuple[int, int]
    extra: dict[str, float] = field(default_factory=dict)
    """Values averaged over the logging window as they are (e.g. a mean cosine)."""


def make_accelerator(run: RunSpec):
    from accelerate import Accelerator, DistributedDataParallelKwargs

    plugins = {}
    if run.distributed == "fsdp":
        from accelerate import FullyShardedDataParallelPlugin

        plugins["fsdp_plugin"] = FullyShardedDataParallelPlugin(use_orig_params=True)
    elif run.distributed.startswith("deepspeed"):
        from accelerate import DeepSpeedPlugin

        plugins["deepspeed_plugin"] = DeepSpeedPlugin(zero_stage=int(run.distributed[-1]))
    trackers = [t for t in run.report_to if t in ("tensorboard", "wandb")]
    return Accelerator(
        # accelerate only runs several CPU processes (gloo) when told the device is the CPU
        cpu=not _has_accelerator_device(),
        mixed_precision=run.precision,
        log_with=trackers or None,
        project_dir=run.out_dir,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        **plugins,
    )


def _has_accelerator_device() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu and xpu.is_available()) or torch.backends.mps.is_available()


def atomic_save(model, final: Path) -> None:
    """`model.save_pretrained(final)` through a temporary folder renamed when complete."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def checkpoints(stage_dir: Path) -> list[Path]:
    """Complete checkpoints of a stage, oldest first (a `.tmp` one was cut short by a kill)."""
    root = stage_dir / "checkpoints"
    return (
        sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        if root.is_dir()
        else []
    )


def resume(accelerator, stage_dir: Path, scheduler, load_extra=None) -> Position:
    """Load the newest checkpoint of a stage into the prepared objects; the position to go on from."""
    found = checkpoints(stage_dir)
    if not found:
        return Position()
    latest = found[-1]
    accelerator.load_state(str(latest))
    scheduler.load_state_dict(torch.load(latest / "scheduler.pt", weights_only=True))
    if load_extra is not None:
        load_extra(latest)
    position = Position(**json.loads((latest / "position.json").read_text()))
    logger.warning("resuming from %s (step %d)", latest, position.step)
    return position


class StepLoop:
    """The loop of one stage. A trainer subclasses it with `batches(position)` (an endless source
    of micro-batches from a position) and `step(source, position) -> StepResult`, whose update goes
    through `accumulate`: the trainer supplies only each micro-batch's loss."""

    name: str = "train"
    unit_rate: str = "samples"

    def __init__(
        self, accelerator, run: RunSpec, scheduler, optimizers: list, total: int, *, model, grad_clip=None
    ):
        self.acc, self.run_spec, self.scheduler = accelerator, run, scheduler
        self.optimizers, self.total = optimizers, total
        self.model, self.grad_clip = model, grad_clip
        self.schedulers = [scheduler]
        """Stepped with the optimizers (a trainer with state of its own adds its schedulers)."""

    def accumulate(self, group: list, loss_of) -> None:
        """One optimizer step over its micro-batches `group` ((epoch, index, batch) each):
        backward of ``loss_of(k, batch)`` for each (accelerate divides it by the accumulation
        steps), then, when gradients sync, clip, every optimizer and scheduler steps, grads clear.
        The one place fovea's trainers update weights."""
        for k, (_, _, batch) in enumerate(group):
            with self.acc.accumulate(self.model):
                self.acc.backward(loss_of(k, batch))
                if not self.acc.sync_gradients:
                    continue
                if self.grad_clip:
                    self.acc.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                for optimizer in self.optimizers:
                    optimizer.step()
                for scheduler in self.schedulers:
                    scheduler.step()
                for optimizer in self.optimizers:
                    optimizer.zero_grad()

    def batches(self, position: Position):
        raise NotImplementedError

    def step(self, source, position: Position) -> StepResult:
        raise NotImplementedError

    def save_extra(self, folder: Path) -> None:
        """Save state accelerate does not hold (called on every process)."""

    def run(self, position: Position, stage_dir: Path) -> None:
        run = self.run_spec
        bar = tqdm(
            total=self.total,
            initial=position.step,
            disable=not (run.progress and self.acc.is_main_process),
            desc=f"stage {self.name}",
            unit="step",
            dynamic_ncols=True,
        )
        if position.step and self.acc.is_main_process:
            forget_metrics_after(Path(run.out_dir) / "metrics.jsonl", self.name, position.step)
        source = self.batches(position)
        window = _Window()
        while position.step < self.total:
            result = self.step(source, position)
            if not math.isfinite(result.loss):
                raise TrainingDiverged(
                    f"stage {self.name}: loss is {result.loss} at step {position.step + 1}; "
                    "lower the learning rate or check the data"
                )
            position.step += 1
            position.epoch, position.batch = result.last[0], result.last[1] + 1
            window.add(result)
            if position.step % run.log_every == 0 or position.step == self.total:
                self.log(window.stats(position.skipped, self.learning_rate()), position, bar)
                window = _Window()
            bar.update()
            if position.step % run.save_every == 0 and position.step < self.total:
                self.save(stage_dir, position)
        bar.close()

    def learning_rate(self) -> float:
        return max(group["lr"] for optimizer in self.optimizers for group in optimizer.param_groups)

    def log(self, stats: dict, position: Position, bar) -> None:
        self.acc.log({f"{self.name}/{k}": v for k, v in stats.items()}, step=position.step)
        self.record({"stage": self.name, "step": position.step, **stats})
        rate = f"{self.unit_rate}_per_s"
        shown = {"loss": f"{stats['loss']:.4f}", "lr": f"{stats['lr']:.2e}"}
        if rate in stats:
            shown[rate.replace("_per_s", "/s")] = f"{stats[rate]:,.0f}"
        bar.set_postfix(**shown)

    def record(self, row: dict) -> None:
        """Append a metrics row to out_dir/metrics.jsonl (main process)."""
        if self.acc.is_main_process:
            with (Path(self.run_spec.out_dir) / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")

    def save(self, stage_dir: Path, position: Position) -> None:
        root = stage_dir / "checkpoints"
        tmp, final = root / f"step-{position.step:08d}.tmp", root / f"step-{position.step:08d}"
        with _tied_weights_quiet():
            self.acc.save_state(str(tmp))
        self.save_extra(tmp)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            (tmp / "position.json").write_text(json.dumps(position.__dict__))
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            for old in checkpoints(stage_dir)[: -self.run_spec.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()


class _Window:
    """Sums over the steps between two metrics rows."""

    def __init__(self):
        self.losses: list[float] = []
        self.counts: dict[str, float] = {}
        self.extra: dict[str, list[float]] = {}
        self.started = time.perf_counter()

    def add(self, result: StepResult) -> None:
        self.losses.append(result.loss)
        for key, value in result.counts.items():
            self.counts[key] = self.counts.get(key, 0.0) + value
        for key, value in result.extra.items():
            self.extra.setdefault(key, []).append(value)

    def stats(self, skipped: int, lr: float) -> dict:
        elapsed = max(1e-9, time.perf_counter() - self.started)
        return {
            "loss": sum(self.losses) / len(self.losses),
            "lr": lr,
            **{f"{key}_per_s": value / elapsed for key, value in self.counts.items()},
            **{key: sum(values) / len(values) for key, values in self.extra.items()},
            "skipped": skipped,
        }


def forget_metrics_after(path: Path, stage: str, step: int) -> None:
    """A resumed stage logs its steps after `step` again: drop the rows the killed run wrote for
    them (and a line the kill cut short), so metrics.jsonl has each step once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("stage") != stage or row.get("step", 0) <= step:
            kept.append(line)
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


class _TiedWeightsNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()  # accelerate prefixes "[RANK n]"


@contextlib.contextmanager
def _tied_weights_quiet():
    """accelerate logs "Removed shared tensor {'lm.lm_head.weight'}" on every save of a model with
    tied embeddings. The state is loaded back into the same, still tied, modules (resume is
    bit-exact, tested), so the line tells a user nothing; it is dropped during our saves only."""
    note = _TiedWeightsNote()
    target = logging.getLogger("accelerate.utils.other")
    target.addFilter(note)
    try:
        yield
    finally:
        target.removeFilter(note)
