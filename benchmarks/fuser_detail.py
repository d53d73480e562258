"""An honest small-scale check of MMFuser's claim: do shallow layers, fused in, help on fine detail?

The `fovea demo` model (a 3-layer ViT at 56 px, a 2-layer LM, both from scratch) is trained on the
synthetic question types where small detail matters (the written word, counting, the tallest of
three bars), twice per seed at an equal budget (same data, steps, learning rates):

* ``single``: the plain connector on the last layer (`layers: [-1]`);
* ``mmfuser``: MMFuser over hidden states 0, 1, 2 queried by the last (`layers: [0, 1, 2, -1]`).

Held-out exact-match accuracy per type and overall, every seed, and the mean. The numbers are
whatever they are: a 3-layer tower from scratch is far from the paper's CLIP-L, and no claim about
the paper's setting follows from them either way.

    python benchmarks/fuser_detail.py [--train-size 2000] [--eval-size 300] [--seeds 3] [--epochs 2]
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
from fovea.train.loop import train
from fovea.train.recipe import Recipe, load_recipe

from common import table

KINDS = ("word", "count", "chart")
CONNECTORS = {
    "single": {"layers": [-1], "projector": "mlp2x_gelu"},
    "mmfuser": {"layers": [0, 1, 2, -1], "fuser": {"type": "mmfuser", "heads": 4}, "projector": "mlp2x_gelu"},
}


def run(name: str, seed: int, data: Path, held_out: Path, out: Path, epochs: float) -> dict[str, float]:
    from fovea.checkpoints import load

    fields = to_dict(load_recipe(RECIPE))
    fields["model"]["connector"] = CONNECTORS[name]
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
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--eval-size", type=int, default=300)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=float, default=2.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "train", args.train_size, seed=0, kinds=KINDS)
        generate(root / "held_out", args.eval_size, seed=10_000, kinds=KINDS)
        results = {
            name: [run(name, seed, root / "train", root / "held_out", root / "runs", args.epochs)
                   for seed in range(args.seeds)]
            for name in CONNECTORS
        }  # fmt: skip
    columns = [*KINDS, "all"]
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
