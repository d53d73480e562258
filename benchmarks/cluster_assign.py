"""Clustering and label assignment: fovea's `spherical_kmeans` and `top_centres` vs raw faiss.

Same data (unit vectors around planted directions, D = --dim), same K, same iterations, spherical,
every point used (max_points_per_centroid = N) on both sides, in one process:

* overhead: fovea vs `faiss.Kmeans` with faiss's random start, medians of alternating repeats.
  fovea starts from greedy k-means++ seeds while it judges them cheap; here it runs with them
  forced on and forced off ("random start": faiss's own, so that ratio is the wrapper alone:
  normalising, the final assignment search, the report). faiss's own k-means++ (`init_method`,
  recent faiss) is shown where the installed faiss has it. The mean cosine of each feature to its
  centre says what the seeding buys;
* growth: fovea's time as N grows at fixed K, and as K grows at fixed N (one run each);
* one level vs two levels (sqrt(K) coarse cells) at the largest K;
* assignment: `top_centres` (torch, exact, chunked) vs `faiss.IndexFlatIP.search` on the same
  features and centres, images/s, and whether they return the same ids.

On a machine shared with other work, `--threads 1` gives steadier numbers: several thread pools
(numpy's and faiss's OpenBLAS, faiss's OpenMP, torch's) spinning on busy cores slow small calls
by an order of magnitude.

    python benchmarks/cluster_assign.py [--dim 512] [--iterations 10] [--overhead 20000x200]
        [--ns 20000,50000,100000,200000] [--n-fixed 50000] [--ks 100,1000,4000] [--k-fixed 1000]
        [--labels 8] [--repeats 5] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager

import numpy as np

from common import interleaved, table


def planted(n: int, dim: int, seed: int = 0, directions: int = 2000) -> np.ndarray:
    """(n, dim) float32 unit vectors scattered around `directions` random unit directions."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((directions, dim), dtype=np.float32)
    x = centres[rng.integers(0, directions, n)] + 0.7 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def raw_faiss(x: np.ndarray, k: int, iterations: int, plusplus: bool = False):
    """faiss.Kmeans as a user would call it, spherical and without subsampling."""
    import faiss

    extra = {"init_method": faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS} if plusplus else {}
    kmeans = faiss.Kmeans(
        x.shape[1], k, niter=iterations, spherical=True, seed=0, verbose=False,
        max_points_per_centroid=len(x), min_points_per_centroid=1, **extra,
    )  # fmt: skip
    kmeans.train(x)
    return kmeans


@contextmanager
def seeding(plusplus: bool):
    """fovea with its greedy k-means++ seeding forced on or off, whatever the size."""
    import fovea.pretrain.cluster as cluster

    saved = cluster._plusplus_is_cheap
    cluster._plusplus_is_cheap = lambda n, k, d: plusplus
    try:
        yield
    finally:
        cluster._plusplus_is_cheap = saved


def overhead(x: np.ndarray, k: int, iterations: int, repeats: int) -> str:
    import faiss

    from fovea.pretrain.cluster import _plusplus_is_cheap, spherical_kmeans

    def fovea(plusplus: bool):
        def run():
            with seeding(plusplus):
                return spherical_kmeans(x, k, iterations=iterations, levels=1)

        return run

    runs = {"faiss.Kmeans, random start": lambda: raw_faiss(x, k, iterations)}
    if hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
        runs["faiss.Kmeans, faiss's k-means++ start"] = lambda: raw_faiss(x, k, iterations, plusplus=True)
    runs["fovea, random start (faiss's)"] = fovea(False)
    runs["fovea, greedy k-means++ start"] = fovea(True)
    times = interleaved(runs, repeats)
    base = times["faiss.Kmeans, random start"]
    rows = []
    for name, run in runs.items():
        result = run()
        cosine = (
            result[1].mean_cosine if isinstance(result, tuple) else float(result.index.search(x, 1)[0].mean())
        )
        rows.append([name, f"{times[name]:.2f}", f"**{times[name] / base:.2f}x**", f"{cosine:.4f}"])
    head = ["run", "seconds (median)", "vs faiss", "mean cosine"]
    default = "greedy k-means++" if _plusplus_is_cheap(len(x), k, x.shape[1]) else "random"
    return (
        f"N = {len(x):,}, K = {k:,}, D = {x.shape[1]}, {iterations} iterations; "
        f"fovea's default start at this size: {default}\n\n" + table(head, rows)
    )


def growth(dim: int, iterations: int, ns: list[int], n_fixed: int, ks: list[int], k_fixed: int) -> str:
    from fovea.pretrain.cluster import spherical_kmeans

    rows = []
    for n, k in [(n, k_fixed) for n in ns] + [(n_fixed, k) for k in ks if (n_fixed, k) != (n_fixed, k_fixed)]:
        x = planted(n, dim)
        _, report = spherical_kmeans(x, k, iterations=iterations, levels=1)
        per = report.seconds / max(1, report.iterations)
        work = n * k * dim * report.iterations * 2 / report.seconds / 1e9
        rows.append([f"{n:,}", f"{k:,}", report.init, f"{report.seconds:.2f}", f"{per:.3f}", f"{work:.0f}"])
    head = ["N", "K", "start", "seconds", "s / iteration (start included)", "effective GFLOP/s"]
    return table(head, rows)


def levels(dim: int, iterations: int, n: int, k: int) -> str:
    from fovea.pretrain.cluster import spherical_kmeans

    x = planted(n, dim)
    rows = []
    for level in (1, 2):
        _, report = spherical_kmeans(x, k, iterations=iterations, levels=level)
        cells = f"{report.coarse_centres} cells" if level == 2 else "-"
        rows.append([level, cells, f"{report.seconds:.2f}", f"{report.mean_cosine:.4f}", report.empty,
                     f"{report.imbalance:.2f}"])  # fmt: skip
    rows.append(["speed-up", "", f"**{float(rows[0][2]) / float(rows[1][2]):.1f}x**", "", "", ""])
    head = ["levels", "coarse", "seconds", "mean cosine", "empty", "imbalance"]
    return f"N = {n:,}, K = {k:,}, D = {dim}, {iterations} iterations\n\n" + table(head, rows)


def assign(dim: int, n: int, k: int, labels: int, repeats: int) -> str:
    import faiss
    import torch

    from fovea.pretrain.assign import top_centres

    x = planted(n, dim, seed=1)
    centres = planted(k, dim, seed=2)
    features, centre_t = torch.from_numpy(x), torch.from_numpy(centres)
    index = faiss.IndexFlatIP(dim)
    index.add(centres)
    times = interleaved(
        {"fovea": lambda: top_centres(features, centre_t, labels), "faiss": lambda: index.search(x, labels)},
        repeats,
    )
    ours, _ = top_centres(features, centre_t, labels)
    _, theirs = index.search(x, labels)
    same = (ours.numpy() == theirs).all(1).mean()
    same_set = (np.sort(ours.numpy(), 1) == np.sort(theirs, 1)).all(1).mean()
    rows = [
        [name, f"{times[name]:.2f}", f"{n / times[name]:,.0f}", f"{times['faiss'] / times[name]:.2f}x"]
        for name in ("faiss", "fovea")
    ]
    head = ["top-L centres", "seconds (median)", "images/s", "speed vs faiss"]
    agree = f"same ids in the same order: {same:.2%} of images; same set: {same_set:.2%}"
    return f"N = {n:,}, K = {k:,}, D = {dim}, L = {labels}\n\n" + table(head, rows) + f"\n\n{agree}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--overhead", default="20000x200", help="N x K of the overhead table")
    parser.add_argument("--ns", default="20000,50000,100000,200000")
    parser.add_argument("--n-fixed", type=int, default=50000, help="N while K grows")
    parser.add_argument("--ks", default="100,1000,4000")
    parser.add_argument("--k-fixed", type=int, default=1000, help="K while N grows")
    parser.add_argument("--labels", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, help="limit faiss, BLAS and torch to this many threads (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (about half a minute)")
    args = parser.parse_args()
    import faiss
    import torch

    if args.threads:
        from threadpoolctl import threadpool_limits  # comes with scikit-learn, in fovea[pretrain]

        threadpool_limits(args.threads)  # numpy's and faiss's OpenBLAS and OpenMP, loaded by now
        torch.set_num_threads(args.threads)
    if args.quick:
        args.overhead, args.ns, args.n_fixed, args.ks, args.k_fixed, args.repeats = (
            "10000x200", "10000,20000", 20000, "100,500", 200, 1
        )  # fmt: skip
    ns, ks = [int(v) for v in args.ns.split(",")], [int(v) for v in args.ks.split(",")]
    n_over, k_over = (int(v) for v in args.overhead.split("x"))

    print(f"faiss {faiss.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads, {faiss.omp_get_max_threads()} faiss threads, "
          f"load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    start = time.perf_counter()
    print(
        "### Overhead: fovea vs faiss.Kmeans\n\n"
        + overhead(planted(n_over, args.dim), k_over, args.iterations, args.repeats)
    )
    print(
        "\n### Growth with N and K (fovea, one level)\n\n"
        + growth(args.dim, args.iterations, ns, args.n_fixed, ks, args.k_fixed)
    )
    print("\n### One level vs two levels\n\n" + levels(args.dim, args.iterations, args.n_fixed, max(ks)))
    print(
        "\n### Assignment: top_centres vs IndexFlatIP.search\n\n"
        + assign(args.dim, args.n_fixed, max(ks), args.labels, args.repeats)
    )
    print(f"\n({time.perf_counter() - start:.0f} s in all; load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
