"""`fovea eval`: generate answers for benchmark tasks, keep every sample, score, report.

Layout of a run directory::

    RUN/run.json                 model, tasks, fovea version, protocols
    RUN/<task>/samples.jsonl     one line per answered sample (id, prompt, prediction, doc, scores),
                                 appended and flushed batch by batch; one file per process
    RUN/<task>/errors.jsonl      samples that could not run this time, with their id and why
    RUN/results.json, results.md the scores

A killed run restarts where it stopped: samples already in ``samples*.jsonl`` are never generated
again (a line cut short by the kill is dropped and redone). Under ``accelerate launch`` every
process takes every N-th sample and writes its own file; the main process scores them together.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm.auto import tqdm

from ..atomic import write_text_atomic
from ..errors import FoveaError
from .provenance import check_resume, remove_own_files, run_identity
from .scorers import SCORERS, aggregate, headline
from .tasks import BadSample, DataError, Sample, TaskSpec, load_task, samples

logger = logging.getLogger(__name__)


def evaluate(
    model,
    tasks: Iterable[str | Path],
    out_dir: str | Path,
    data_root: str | Path,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    hub: bool = False,
    judge=None,
    model_name: str = "",
    progress: bool = True,
    template: str | None = "default",
    overwrite: bool = False,
    sampling: dict | None = None,
) -> dict:
    """Run `tasks` on `model`; returns the results dict also written to ``out_dir/results.json``.

    Per-sample problems (a missing image, a malformed row, a prompt over the model's length) are
    written to the task's ``errors.jsonl`` with the sample id and counted in the results; the rest
    of the task is scored. `judge` (an `LLMJudge`) scores tasks that need one (OpenEQA).
    `template` wraps each prompt (``"default"``: the model's own, see ``model.chat_format``).
    `sampling`: ``model.generate``'s sampling arguments (``do_sample``, ``temperature``, ``top_p``,
    ``seed``); None decodes greedily, as the published protocols do.
    A directory holding a run of another model, template or task definition is refused (see
    `provenance`); `overwrite` replaces that run.
    """
    specs = [load_task(t) for t in tasks]  # unknown task names fail here, before any work
    out = Path(out_dir)
    rank, world, barrier = _distributed()
    _prepare_run(out, model, model_name, specs, data_root, template, sampling, overwrite, rank == 0, barrier)
    options = {"template": template, **(sampling or {})}
    failed: dict[str, str] = {}
    for spec in specs:
        try:
            task_dir = out / spec.name
            generate_task(
                model, spec, task_dir, data_root, batch_size, limit, hub, rank, world, progress, options
            )
        except DataError as err:  # no data, an unreadable file: this task fails, the others run
            failed[spec.name] = str(err)
            logger.error("%s", err)
    barrier()
    if rank != 0:
        return {}
    return _score_all(specs, out, judge, progress, model_name, failed)


def _score_all(specs, out: Path, judge, progress: bool, model_name: str, failed: dict[str, str]) -> dict:
    """Score every task's records; write results.json and results.md (main process only)."""
    from .report import markdown

    results = {"model": model_name, "tasks": {}}
    for spec in specs:
        results["tasks"][spec.name] = score_task(spec, out / spec.name, judge, progress)
        if spec.name in failed:
            results["tasks"][spec.name]["failed"] = failed[spec.name]
    _write_json(out / "results.json", results)
    (out / "results.md").write_text(markdown([results]))
    return results


def _prepare_run(
    out: Path, model, model_name, specs, data_root, template, sampling, overwrite, main, barrier
) -> None:
    """Refuse another run's directory (every process, so all stop alike), then the main process
    clears an overwritten run and writes run.json while the others wait."""
    template_name = getattr(model.chat_format(template), "name", None)
    identity = check_resume(out, run_identity(model, specs, template_name, data_root, sampling), overwrite)
    barrier()  # every process has read the old run.json before it changes
    if main:
        if overwrite and out.is_dir():
            remove_own_files(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "run.json", _run_info(model, model_name, specs, identity, template))
    barrier()


def _distributed() -> tuple[int, int, Callable[[], None]]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    import torch
    from accelerate import PartialState

    # accelerate only forms a CPU process group (gloo) when told the device is the CPU
    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in (
        "1",
        "true",
    )
    state = PartialState(cpu=use_cpu)
    return state.process_index, state.num_processes, state.wait_for_everyone


def _run_info(model, model_name: str, specs: list[TaskSpec], identity: dict, template) -> dict:
    """run.json: for people (names, paths, protocols, generation settings) and for resuming
    (`identity`, compared by `provenance.check_resume`)."""
    from .. import __version__

    source = getattr(model, "checkpoint_dir", None)
    return {
        "model": model_name,
        "checkpoint": str(Path(source).resolve()) if source else None,
        "template": identity["template"],
        "template_origin": model.template_note(template) and model.config.template_origin,
        "frames": _frames_rule(model),
        "fovea": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tasks": {
            s.name: {
                "protocol": s.protocol,
                "source": s.source,
                "max_new_tokens": s.max_new_tokens,
                "greedy": not identity.get("sampling"),
                "options": s.options,
            }
            for s in specs
        },
        "identity": identity,
    }


def _frames_rule(model) -> dict:
    """How samples with many images ran (OpenEQA's 32 frames do): pooled frames, and how."""
    frames, above = model.config.frames, model.config.image.frames_above
    return {
        "images_above": above,
        "pool": frames.pool,
        "stride": frames.stride,
        "newline": frames.position(model.config.newline),
        "rule": "never" if above is None else (
            f"a sample with more than {above} images runs each as a padded one-frame video, its tokens "
            f"pooled ({frames.pool}, stride {frames.stride}) after the projector"
        ),
    }  # fmt: skip


# -- generation --------------------------------------------------------------------------------


def generate_task(
    model,
    spec,
    task_dir,
    data_root,
    batch_size,
    limit,
    hub,
    rank=0,
    world=1,
    progress=True,
    options=None,
) -> None:
    """Answer the task's samples not answered yet; `options`: ``model.generate``'s template and
    sampling arguments."""
    options = options or {"template": "default"}
    task_dir.mkdir(parents=True, exist_ok=True)
    done = {r["id"] for r in read_records(task_dir)}
    own = task_dir / ("samples.jsonl" if world == 1 else f"samples.rank{rank}.jsonl")
    drop_partial_line(own)
    errors: list[dict] = []
    todo: list[Sample] = []
    bar = tqdm(desc=f"{spec.name} [{rank}]" if world > 1 else spec.name, unit="q", disable=not progress)
    bar.update(len(done))
    with own.open("a", encoding="utf-8") as sink:
        for index, sample in enumerate(samples(spec, data_root, hub)):
            if limit is not None and index >= limit:
                break
            if index % world != rank or sample.id in done:
                continue
            if isinstance(sample, BadSample):
                errors.append({"id": sample.id, "error": sample.error})
                continue
            todo.append(sample)
            if len(todo) == batch_size:
                _run_batch(model, spec, todo, sink, errors, bar, options)
                todo = []
        if todo:
            _run_batch(model, spec, todo, sink, errors, bar, options)
    bar.close()
    err_file = task_dir / ("errors.jsonl" if world == 1 else f"errors.rank{rank}.jsonl")
    err_file.write_text("".join(json.dumps(e) + "\n" for e in errors))
    for e in errors[:5]:
        logger.warning("%s: sample %s: %s", spec.name, e["id"], e["error"])
    if len(errors) > 5:
        logger.warning("%s: %d more bad samples, listed in %s", spec.name, len(errors) - 5, err_file)


def _run_batch(model, spec: TaskSpec, batch: list[Sample], sink, errors: list[dict], bar, options) -> None:
    ready, images = [], []
    for sample in batch:
        try:
            images.append([model.processor.load(src) for src in sample.images])
            ready.append(sample)
        except FoveaError as err:
            errors.append({"id": sample.id, "error": str(err)})
    if not ready:
        return
    prompts = [s.prompt.replace("<image>", model.config.image_token) for s in ready]
    try:
        predictions = _answer(model, spec, ready, prompts, images, options)
    except FoveaError:
        if len(ready) == 1:
            raise
        # one sample spoiled the batch (too long, wrong tag count): run them one by one to find it
        for sample, imgs in zip(ready, images):
            _run_one(model, spec, sample, imgs, sink, errors, bar, options)
        return
    _write(spec, ready, predictions, sink, errors, bar)


def _answer(model, spec: TaskSpec, samples: list, prompts: list[str], images: list, options: dict) -> list:
    """The model's predictions: generated text, or what the task's scorer predicts itself (masks)."""
    scorer = SCORERS.get(spec.scorer)
    if scorer.predict is not None:
        return scorer.predict(model, spec, samples, images, options)
    return model.generate(prompts, images=images, max_new_tokens=spec.max_new_tokens, **options)


def _run_one(model, spec, sample, imgs, sink, errors, bar, options) -> None:
    try:
        prompt = sample.prompt.replace("<image>", model.config.image_token)
        prediction = _answer(model, spec, [sample], [prompt], [imgs], options)
    except FoveaError as err:
        errors.append({"id": sample.id, "error": str(err)})
        return
    _write(spec, [sample], prediction, sink, errors, bar)


def _write(spec, ready, predictions, sink, errors, bar) -> None:
    scorer = SCORERS.get(spec.scorer)
    for sample, prediction in zip(ready, predictions):
        try:
            scores = scorer.score(spec, sample.doc, prediction)
        except (KeyError, TypeError, ValueError) as err:
            errors.append({"id": sample.id, "error": f"cannot score: {type(err).__name__}: {err}"})
            continue
        record = {"id": sample.id, "prompt": sample.prompt, "prediction": prediction, "doc": sample.doc}
        sink.write(json.dumps({**record, "scores": scores}, default=str) + "\n")
    sink.flush()
    os.fsync(sink.fileno())
    bar.update(len(ready))


# -- records and scoring -----------------------------------------------------------------------


def read_records(task_dir: Path) -> list[dict]:
    """Every complete record of a task (all processes' files); a torn last line is ignored."""
    records, seen = [], set()
    for path in sorted(task_dir.glob("samples*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record["id"] not in seen:
                seen.add(record["id"])
                records.append(record)
    return records


def drop_partial_line(path: Path) -> None:
    """A kill mid-write leaves a line without its newline: cut it so the next append starts clean."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def read_errors(task_dir: Path) -> list[dict]:
    out = []
    for path in sorted(task_dir.glob("errors*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return out


def score_task(spec: TaskSpec, task_dir: Path, judge=None, progress: bool = True) -> dict:
    records = read_records(task_dir)
    errors = read_errors(task_dir)
    scorer = SCORERS.get(spec.scorer)
    notes = []
    if scorer.judged:
        if judge is None:
            notes.append("no judge given (--judge-url): predictions kept, LLM-Match not scored")
        else:
            judge.score(spec, records, task_dir / "judgements.jsonl", progress=progress)
    metrics = aggregate(spec, records) if records else {}
    value = headline(spec, metrics)
    return {
        "protocol": spec.protocol,
        "samples": len(records),
        "errors": len(errors),
        "headline": scorer.headline,
        "headline_percent": value,
        "metrics": metrics,
        "notes": notes,
    }


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))
