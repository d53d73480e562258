"""`fovea demo`: the whole pipeline offline on a CPU in minutes.

1. synthesise image-QA data (shapes, colours, counts, positions, words, bar charts, and nine-frame
   questions that run as pooled frames);
2. train a tiny LLaVA-NeXT-style model in two stages (align: connector on captions with the
   `plain` template; finetune: everything on questions with `qwen_1_5`);
3. score it on a held-out split: accuracy per question type against chance;
4. save the checkpoint and answer a question about one held-out image.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import from_dict, to_dict
from .data.synthetic import ANSWERS, DEFAULT_KINDS, chance, generate

logger = logging.getLogger(__name__)

RECIPE = Path(__file__).parent / "recipes" / "demo.yaml"


@dataclass
class DemoResult:
    checkpoint: Path
    accuracy: dict[str, float]
    """Question type -> held-out accuracy."""
    sample: dict


def question(record: dict) -> str:
    """A synthetic record's question as it was trained, its image tags (and frame labels) included."""
    return record["conversations"][0]["value"]


def image_paths(record: dict, root: Path) -> list[Path]:
    """A synthetic record's images: its one image, or its frames."""
    return [root / name for name in record.get("images") or [record["image"]]]


def score(
    model, records: list[dict], root: Path, batch_size: int = 32, progress: bool = False
) -> dict[str, float]:
    """Greedy exact-match accuracy per question type (answers compared lower-cased, stripped)."""
    hits: dict[str, list[int]] = {}
    for start in tqdm(
        range(0, len(records), batch_size), disable=not progress, desc="evaluate", unit="batch"
    ):
        chunk = records[start : start + batch_size]
        prompts = [question(r) for r in chunk]
        answers = model.generate(prompts, images=[image_paths(r, root) for r in chunk], max_new_tokens=8)
        for record, answer in zip(chunk, answers):
            hits.setdefault(record["type"], []).append(
                int(answer.strip().lower() == record["answer"].lower())
            )
    return {kind: sum(v) / len(v) for kind, v in sorted(hits.items())}


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    train_size: int = 7000,
    eval_size: int = 600,
    epochs: float = 4.0,
    seed: int = 0,
    kinds: tuple[str, ...] = DEFAULT_KINDS,
    progress: bool = True,
    packing: bool = True,
) -> DemoResult:
    """`packing`: the stages' packing (benchmarks/demo_packing.py compares both)."""
    from .checkpoints import load
    from .train.loop import train
    from .train.recipe import Recipe, load_recipe

    out = Path(out_dir)
    data, held_out = out / "data" / "train", out / "data" / "held_out"
    if not (data / "qa.json").is_file():
        generate(data, train_size, seed=seed, kinds=kinds)
    if not (held_out / "qa.json").is_file():
        generate(held_out, eval_size, seed=seed + 10_000, kinds=kinds)
    recipe = load_recipe(RECIPE)
    fields = to_dict(recipe)
    fields["run"].update(out_dir=str(out / "train"), seed=seed, progress=progress)
    fields["stages"][0]["data"] = str(data / "captions.json")
    fields["stages"][1].update(data=str(data / "qa.json"), epochs=epochs)
    for stage in fields["stages"]:
        stage["packing"] = packing
    final = train(from_dict(Recipe, fields))
    model = load(final)
    torch.manual_seed(seed)
    records = json.loads((held_out / "qa.json").read_text())
    accuracy = score(model, records, held_out, progress=progress)
    sample = records[0]
    answer = model.generate(question(sample), images=image_paths(sample, held_out), max_new_tokens=8)
    path = str(image_paths(sample, held_out)[0])
    return DemoResult(final, accuracy, {**sample, "model_answer": answer, "path": path})


def report(result: DemoResult) -> str:
    """The table `fovea demo` prints."""
    lines = ["| question type | answers | chance | held-out accuracy |", "|---|---|---|---|"]
    for kind, acc in result.accuracy.items():
        lines.append(f"| {kind} | {len(ANSWERS[kind])} | {chance(kind):.0%} | {acc:.0%} |")
    return "\n".join(lines)
