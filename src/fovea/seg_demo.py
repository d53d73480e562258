"""`fovea demo seg`: referring segmentation end to end, offline, on a CPU, in minutes.

1. Referring scenes (data/seg_scenes.py): 64 px images of 2-3 coloured shapes, each record asking
   for one ("Segment the red circle left of the square.") with its mask as COCO RLE.
2. A tiny random model given MLCD-Seg's mask path (a tiny random SAM, its image encoder frozen),
   trained one stage on LM cross-entropy + 2.0 x BCE + 0.5 x Dice.
3. Held-out scenes scored as MLCD-Seg scores RefCOCO: teacher-forced (the ground-truth answer with
   its [SEG]), cIoU and gIoU, against the best constant mask (the same mask for every image: the
   pixels set in at least a fraction t of the training masks, t chosen on the training masks).
4. One held-out scene's overlay PNG, and the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .config import from_dict, to_dict
from .data.seg_scenes import make_seg_scenes
from .imaging.masks import rle_decode
from .seg.metrics import intersection_union, refer_scores

RECIPE = Path(__file__).parent / "recipes" / "demo_seg.yaml"
SAM_WIDTH = 64


@dataclass
class SegDemo:
    checkpoint: Path
    scores: dict[str, dict[str, float]]
    """"model" and "best constant mask": cIoU, gIoU (fractions)."""
    overlay: Path
    settings: dict


def run_seg_demo(out_dir: str | Path = "runs/demo-seg", *, train_size: int = 2000, eval_size: int = 200,
                 epochs: float = 8.0, seed: int = 0, progress: bool = True) -> SegDemo:  # fmt: skip
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per load says nothing here
    try:
        return _run(Path(out_dir), train_size, eval_size, epochs, seed, progress)
    finally:
        hf_logging.enable_progress_bar()


def _run(out: Path, train_size: int, eval_size: int, epochs: float, seed: int, progress: bool) -> SegDemo:
    from .checkpoints import load
    from .tiny import tiny_sam
    from .train.loop import train
    from .train.recipe import Recipe, load_recipe

    data, held_out = out / "data" / "train", out / "data" / "held_out"
    if not (data / "records.json").is_file():
        make_seg_scenes(data, train_size, seed=seed)
    if not (held_out / "records.json").is_file():
        make_seg_scenes(held_out, eval_size, seed=seed + 10_000)
    sam = (
        out / "sam"
        if (out / "sam" / "config.json").is_file()
        else tiny_sam(out / "sam", seed=seed, width=SAM_WIDTH)
    )
    fields = to_dict(load_recipe(RECIPE))
    fields["model"]["sam"] = str(sam)
    fields["run"].update(out_dir=str(out / "train"), seed=seed, progress=progress)
    fields["stages"][0].update(data=str(data / "records.json"), epochs=epochs)
    final = train(from_dict(Recipe, fields))
    model = load(final)
    records = json.loads((held_out / "records.json").read_text())
    pairs, first = _model_pairs(model, records, held_out, progress)
    scores = {"model": refer_scores(pairs), "best constant mask": _constant(data, records)}
    overlay = _overlay(out, held_out / records[0]["image"], first)
    settings = {"train_size": train_size, "eval_size": eval_size, "epochs": epochs, "seed": seed}
    (out / "results.json").write_text(json.dumps({"settings": settings, "scores": scores}, indent=2))
    return SegDemo(final, scores, overlay, settings)


@torch.inference_mode()
def _model_pairs(model, records: list[dict], root: Path, progress: bool) -> tuple[list, np.ndarray]:
    """Teacher-forced (I, U) per held-out record (the ground-truth answer with its [SEG]), as
    MLCD-Seg's RefCOCO evaluation; and the first record's predicted mask."""
    from .seg.head import sam_inputs
    from .seg.model import seg_forward

    processor = model.config.seg.processor()
    pairs, first = [], None
    for record in tqdm(records, desc="evaluate", unit="scene", disable=not progress):
        image = Image.open(root / record["image"]).convert("RGB")
        messages = [{"role": "user", "content": record["conversations"][0]["value"]}]
        inputs = model.prepare_chat(messages, [image])
        answer = model.tokenizer(record["conversations"][1]["value"], add_special_tokens=False)["input_ids"]
        ids = torch.cat([inputs.input_ids, torch.tensor([answer])], dim=1)
        full = inputs.replace(input_ids=ids, attention_mask=torch.ones_like(ids))
        predicted = (
            seg_forward(model, full, [sam_inputs(processor, [image])], logits=False).masks[0][0][0] > 0
        )
        target = rle_decode(record["segmentation"][0])
        pairs.append([intersection_union(predicted.numpy(), target)])
        first = predicted.numpy() if first is None else first
    return pairs, first


def _constant(train_root: Path, records: list[dict]) -> dict[str, float]:
    """The best constant mask's held-out scores: pixels set in at least a fraction t of the
    training masks, t in 0.05 .. 0.95 chosen by training cIoU."""
    train = [rle_decode(r["segmentation"][0]) for r in json.loads((train_root / "records.json").read_text())]
    frequency = np.mean(train, axis=0)
    best = max(np.arange(0.05, 1.0, 0.05), key=lambda t: refer_scores([[intersection_union(frequency >= t, m)]
                                                                       for m in train])["ciou"])  # fmt: skip
    constant = frequency >= best
    held = [[intersection_union(constant, rle_decode(r["segmentation"][0]))] for r in records]
    return {**refer_scores(held), "threshold": round(float(best), 2)}


def _overlay(out: Path, image_path: Path, mask: np.ndarray) -> Path:
    from .seg.pictures import overlay, save_png

    image = Image.open(image_path).convert("RGB")
    path = out / "overlay.png"
    save_png(
        path, overlay(image, mask[None]).resize((image.width * 4, image.height * 4), Image.Resampling.NEAREST)
    )
    return path


def report(result: SegDemo) -> str:
    lines = ["| masks | cIoU | gIoU |", "|---|---|---|"]
    for name, s in result.scores.items():
        lines.append(f"| {name} | {100 * s['ciou']:.1f} | {100 * s['giou']:.1f} |")
    return "\n".join(lines)
