"""Honest small-scale checks of two fusers' claims, each against the single-layer connector.

The `fovea demo` model (a 3-layer ViT at 56 px, a 2-layer LM, both from scratch) is trained twice
per seed at an equal budget (same data, steps, learning rates), on the synthetic questions where
the claim should show:

* ``--task detail`` (MMFuser): do shallow layers, fused in, help on fine detail? The written word,
  counting, the tallest of three bars; ``single`` (`layers: [-1]`) against MMFuser over hidden
  states 0, 1, 2 queried by the last.
* ``--task question`` (vMLLM): does gating by the question help where the question decides which
  detail matters? Two shapes, "what colour is the left shape?", and four smaller ones, "... the
  shape at the top left?"; ``single`` against vMLLM
  aggregating hidden states 0..3 and gating the last by the question (a random frozen CLIP text
  tower of the tower's width: nothing pretrained anywhere, so only the gates can learn to use it).

Held-out exact-match accuracy per type and overall, every seed, and the mean. The numbers are
whatever they are: a 3-layer tower from scratch is far from the papers' CLIP-L and SigLIP, and no
claim about their settings follows from them either way.

    python benchmarks/fuser_detail.py [--task detail|question] [--train-size 2000] [--eval-size 300] [--seeds 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from fovea.config import from_dict, to_dict
from fovea.data.synthetic import generate
from fovea.demo import RECIPE, score
from fovea.tiny import tiny_text_tower
from fovea.train.loop import train
from fovea.train.recipe import Recipe, load_recipe

from common import table

_TEXT = tiny_text_tower("clip_text_model", width=64)[0]  # the demo tower's width: P = 64
TASKS = {
    "detail": {
        "kinds": ("word", "count", "chart"),
        "connectors": {
            "single": {"layers": [-1], "projector": "mlp2x_gelu"},
            "mmfuser": {"layers": [0, 1, 2, -1], "fuser": {"type": "mmfuser", "heads": 4}, "projector": "mlp2x_gelu"},
        },
    },
    "question": {
        "kinds": ("pair", "quadrant"),
        "connectors": {
            "single": {"layers": [-1], "projector": "mlp2x_gelu"},
            "vmllm": {"layers": [0, 1, 2, 3, -1], "projector": "mlp2x_gelu",
                      "fuser": {"type": "vmllm", "text_tower": _TEXT, "projection_dim": 64}},
        },
    },
}  # fmt: skip


def run(connector: dict, name: str, seed: int, data: Path, held_out: Path, out: Path, epochs: float) -> dict:
    from fovea.checkpoints import load

    fields = to_dict(load_recipe(RECIPE))
    fields["model"]["connector"] = connector
    fields["run"].update(out_dir=str(out / f"{name}-{seed}"), seed=seed, progress=False, report_to=[])
    fields["stages"][0]["data"] = str(data / "captions.json")
    fields["stages"][1].update(data=str(data / "qa.json"), epochs=epochs)
    final = train(from_dict(Recipe, fields))
    torch.manual_seed(seed)
    records = json.loads((held_out / "qa.json").read_text())
    accuracy = score(load(final), records, held_out)
    accuracy["all"] = statistics.mean(accuracy.values())
    return accuracy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=list(TASKS), default="detail")
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--eval-size", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=float, default=2.0)
    args = p.parse_args()
    task = TASKS[args.task]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "train", args.train_size, seed=0, kinds=task["kinds"])
        generate(root / "held_out", args.eval_size, seed=10_000, kinds=task["kinds"])
        results = {
            name: [run(connector, name, seed, root / "train", root / "held_out", root / "runs", args.epochs)
                   for seed in range(args.seeds)]
            for name, connector in task["connectors"].items()
        }  # fmt: skip
    columns = [*task["kinds"], "all"]
    rows = []
    for name, runs in results.items():
        for seed, accuracy in enumerate(runs):
            rows.append([name, seed, *(f"{accuracy[k]:.1%}" for k in columns)])
        rows.append(
            [f"**{name} mean**", "", *(f"{statistics.mean(r[k] for r in runs):.1%}" for k in columns)]
        )
    print(f"{args.train_size} training / {args.eval_size} held-out questions, {args.epochs:g} epochs")
    print(table(["connector", "seed", *columns], rows))


if __name__ == "__main__":
    main()
