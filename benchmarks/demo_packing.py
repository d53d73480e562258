"""`fovea demo`'s model trained packed and unpacked, on the same data and seeds: held-out accuracy per
question kind and wall-clock time of each, side by side (packing is exact, so accuracies differ
only by float noise; the time is what packing saves on the demo's data).

    python benchmarks/demo_packing.py [--train-size 2000] [--epochs 2] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import table


def run(train_size: int, epochs: float, seeds: list[int]) -> str:
    from fovea.demo import run_demo
    from fovea.threads import configure

    configure()
    results: dict[str, list] = {"packed": [], "unpacked": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name in results:
                start = time.perf_counter()
                out = run_demo(Path(tmp) / f"{name}-{seed}", train_size=train_size, eval_size=300, epochs=epochs,
                               seed=seed, progress=False, packing=name == "packed")  # fmt: skip
                results[name].append((time.perf_counter() - start, out.accuracy))
    kinds = sorted(results["packed"][0][1])
    rows = []
    for name, runs in results.items():
        seconds = statistics.median(t for t, _ in runs)
        means = [statistics.mean(acc[k] for _, acc in runs) for k in kinds]
        rows.append([name, f"{seconds:.1f}", *(f"{100 * m:.1f}" for m in means)])
    return table(["training", "seconds (median)", *(f"{k} %" for k in kinds)], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    print(run(args.train_size, args.epochs, args.seeds))
