"""Spherical k-means over teacher features with faiss: the pseudo-classes of UNICOM and MLCD.

Every feature counts: faiss subsamples to 256 points per centroid by default, which at a million
centres silently drops most of the data, so `max_points_per_centroid` is set to the whole set.
Starting points are greedy k-means++ seeds (each new one far from those chosen, from a sample of
64 points per centre) while their cost stays small in absolute terms (about 2e10 multiply-adds,
seconds on a CPU core; being memory-bound, that can still be a few times the k-means itself, see
benchmarks/cluster_assign.py); beyond, faiss's random starts, which `restarts` can repeat. Runs
are seeded and reproducible.

For large K (from `TWO_LEVEL_FROM` centres, or `levels=2`) the clustering is hierarchical, as
faiss's `contrib.clustering.two_level_clustering`: about sqrt(K) coarse centres first, then each
coarse cell is clustered on its own into a number of centres proportional to its size, summing
exactly to K. Each iteration then compares a point with about 2 sqrt(K) centres instead of K.
Unlike that faiss routine, no level subsamples (it keeps 2,000 points per coarse centre), every
cell gets its own seed and at least one centre, and no cell is asked for more centres than points.

GPU: `gpu=True` runs the search on every GPU faiss sees (faiss's `Kmeans(gpu=True)`: the flat
index is replicated over the GPUs and the points are split between them); `CUDA_VISIBLE_DEVICES`
chooses which. It needs a GPU build of faiss; faiss-cpu is refused by name, never run on the CPU.

The report says what a user needs to trust the clusters: iterations, faiss's objective per
iteration, the mean cosine of each feature to its centre, and how many clusters came out empty or
oversized.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError

TWO_LEVEL_FROM = 100_000
"""With `levels=None`, K from here on is clustered in two levels (MLCD's K ablation starts at 100K)."""


@dataclass
class ClusterReport:
    points: int
    dim: int
    centres: int
    iterations: int
    """k-means iterations run (faiss stops early once nothing changes); two levels: the most any cell ran."""
    objective: list[float]
    """faiss's objective after each iteration (for spherical k-means: the summed similarities);
    two levels: summed over the cells, a cell that stopped early counting with its last value."""
    mean_cosine: float
    """Mean cosine of every feature to its own centre."""
    empty: int
    largest: int
    smallest: int
    imbalance: float
    """faiss's imbalance factor of the final cluster sizes (K * sum(size^2) / N^2): 1.0 is perfectly even."""
    init: str
    """How the centres started: "kmeans++" or "random" (faiss's, for very large K); two levels: both
    levels' ways, e.g. "kmeans++ (coarse), kmeans++ (cells)"."""
    seconds: float
    levels: int = 1
    """1: plain k-means over all K centres; 2: hierarchical. With two levels each feature's centre
    (hence mean_cosine and the sizes) is its nearest within its coarse cell; `fovea pretrain assign`
    then labels every feature against all K centres, exactly."""
    coarse_centres: int = 0
    """Two levels: the number of coarse cells (about sqrt(K)); 0 for one level."""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Fit:
    centres: np.ndarray  # (k, D) float32, unit rows
    assigned: np.ndarray  # (n,) int64: each point's centre
    objective: list[float]
    init: str


def spherical_kmeans(
    features: np.ndarray,
    k: int,
    *,
    iterations: int = 20,
    restarts: int = 1,
    seed: int = 0,
    gpu: bool = False,
    levels: int | None = None,
) -> tuple[np.ndarray, ClusterReport]:
    """(N, D) features -> (K, D) float32 L2-normalised centres and the report. k-means finds a local
    optimum from its start; `restarts` runs it from that many seeds and keeps the best (highest
    mean cosine of the features to their centres). `levels`: 1, 2, or None (two from
    `TWO_LEVEL_FROM` centres on)."""
    x = _unit(features)
    if not 1 <= k <= len(x):
        raise ConfigError(f"--centres must be between 1 and the {len(x)} features, got {k}")
    levels = (2 if k >= TWO_LEVEL_FROM else 1) if levels is None else levels
    if levels not in (1, 2):
        raise ConfigError(f"levels must be 1 or 2 (or None to choose by K), got {levels}")
    index = _flat_index(x.shape[1], gpu)  # one search index, reused by every (sub-)clustering
    start = time.perf_counter()
    run = _fit if levels == 1 else _two_level
    fits = [run(x, k, iterations, seed + i, index) for i in range(restarts)]
    best = max(fits, key=lambda fit: _mean_cosine(x, fit))
    return best.centres, _report(x, best, levels, time.perf_counter() - start)


def _report(x: np.ndarray, fit: _Fit, levels: int, seconds: float) -> ClusterReport:
    k = len(fit.centres)
    sizes = np.bincount(fit.assigned, minlength=k)
    return ClusterReport(
        points=len(x),
        dim=x.shape[1],
        centres=k,
        iterations=len(fit.objective),
        objective=fit.objective,
        mean_cosine=_mean_cosine(x, fit),
        empty=int((sizes == 0).sum()),
        largest=int(sizes.max()),
        smallest=int(sizes.min()),
        imbalance=float(k * np.square(sizes, dtype=np.float64).sum() / float(len(x)) ** 2),
        init=fit.init,
        seconds=seconds,
        levels=levels,
        coarse_centres=_coarse_count(k) if levels == 2 else 0,
    )


def _fit(x: np.ndarray, k: int, iterations: int, seed: int, index) -> _Fit:
    """One faiss spherical k-means of all of `x` into k centres, and each point's centre."""
    import faiss

    params = faiss.ClusteringParameters()
    params.niter, params.spherical, params.seed, params.verbose = iterations, True, seed, False
    params.max_points_per_centroid, params.min_points_per_centroid = len(x), 1  # no subsampling
    clustering = faiss.Clustering(x.shape[1], k, params)
    plusplus = _plusplus_is_cheap(len(x), k, x.shape[1])
    if plusplus:
        faiss.copy_array_to_vector(_kmeanspp(x, k, seed).ravel(), clustering.centroids)
    clustering.train(x, index)
    centres = _unit(faiss.vector_float_to_array(clustering.centroids).reshape(k, x.shape[1]))
    stats = clustering.iteration_stats
    # with as many points as centres faiss copies the points and iterates nothing
    objective = [float(stats.at(i).obj) for i in range(stats.size())] if len(x) > k else []
    index.reset()
    index.add(centres)
    _, assigned = index.search(x, 1)  # (n, 1): the final centres, not those of the last iteration
    return _Fit(centres, assigned[:, 0].astype(np.int64), objective, "kmeans++" if plusplus else "random")


def _two_level(x: np.ndarray, k: int, iterations: int, seed: int, index) -> _Fit:
    """About sqrt(k) coarse cells, then each cell's points clustered into its share of the k centres."""
    coarse = _fit(x, _coarse_count(k), iterations, seed, index)
    sizes = np.bincount(coarse.assigned, minlength=len(coarse.centres))
    shares = split_centres(sizes, k)
    order = np.argsort(coarse.assigned, kind="stable")  # each cell's points, contiguous
    cell_seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=len(sizes))
    centres, objectives, inits = [], [], set()
    assigned = np.empty(len(x), dtype=np.int64)
    first, offset = 0, 0
    for cell, (size, share) in enumerate(zip(sizes.tolist(), shares.tolist())):
        members = order[first : first + size]
        first += size
        if share == 0:  # an empty cell
            continue
        fit = _fit(x[members], share, iterations, int(cell_seeds[cell]), index)
        centres.append(fit.centres)
        assigned[members] = fit.assigned + offset
        offset += share
        objectives.append(fit.objective or [float(size)])  # copied points: each at cosine 1
        inits.add(fit.init)
    cells = " and ".join(sorted(inits))
    return _Fit(
        np.concatenate(centres), assigned, _summed(objectives), f"{coarse.init} (coarse), {cells} (cells)"
    )


def _coarse_count(k: int) -> int:
    return max(1, round(math.sqrt(k)))


def split_centres(sizes: np.ndarray, k: int) -> np.ndarray:
    """Centres per coarse cell: proportional to its size (largest remainders), at least one for a
    non-empty cell and at most one per point, summing exactly to k (needs cells <= k <= points)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    quota = sizes * (k / sizes.sum())
    shares = np.clip(np.floor(quota).astype(np.int64), (sizes > 0).astype(np.int64), sizes)
    while (total := int(shares.sum())) != k:  # at most one step per cell
        if total < k:
            i = int(np.where(shares < sizes, quota - shares, -np.inf).argmax())
            shares[i] += 1
        else:
            i = int(np.where(shares > 1, quota - shares, np.inf).argmin())
            shares[i] -= 1
    return shares


def _summed(objectives: list[list[float]]) -> list[float]:
    """Per iteration, the sum over cells; a cell that stopped early counts with its last value."""
    steps = max(len(o) for o in objectives)
    return [float(sum(o[min(i, len(o) - 1)] for o in objectives)) for i in range(steps)]


def _mean_cosine(x: np.ndarray, fit: _Fit) -> float:
    return float(np.einsum("nd,nd->n", x, fit.centres[fit.assigned]).mean())


def _flat_index(dim: int, gpu: bool):
    """faiss's inner-product flat index; with `gpu`, replicated over every GPU faiss sees."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    if not gpu:
        return index
    if not hasattr(faiss, "StandardGpuResources"):
        raise ConfigError(
            "gpu=True (--gpu): this faiss is a CPU-only build (faiss-cpu); install a GPU build "
            "(conda install -c pytorch faiss-gpu, or pip install faiss-gpu-cu12) or drop --gpu"
        )
    if faiss.get_num_gpus() == 0:
        raise ConfigError("gpu=True (--gpu): faiss has GPU support but sees no GPU (CUDA_VISIBLE_DEVICES?)")
    return faiss.index_cpu_to_all_gpus(index)


def _plusplus_is_cheap(n: int, k: int, d: int) -> bool:
    return min(n, 64 * k) * k * d * (2 + np.log(k)) <= 2e10  # about the work of a few k-means iterations


def _kmeanspp(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ seeding for cosine distance on a sample (as scikit-learn seeds): each new
    centre is the best of a few candidates drawn with probability proportional to their distance
    from the nearest centre so far — plain k-means++ often seeds one cluster twice."""
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), min(len(x), 64 * k), replace=False)]
    trials = 2 + int(np.log(k))
    chosen = [int(rng.integers(len(sample)))]
    distance = 1.0 - sample @ sample[chosen[0]]  # (m,) to the nearest chosen centre
    for _ in range(1, k):
        weights = np.clip(distance, 0, None)
        total = weights.sum()
        p = weights / total if total > 0 else None
        candidates = rng.choice(len(sample), size=trials, p=p)
        options = np.minimum(distance[None], 1.0 - sample[candidates] @ sample.T)  # (trials, m)
        best = int(options.sum(1).argmin())
        chosen.append(int(candidates[best]))
        distance = options[best]
    return np.ascontiguousarray(sample[chosen])


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or not len(x):
        raise ConfigError(f"features must be an (N, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError("features hold NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ConfigError(f"{int((norms == 0).sum())} features are all zeros (no direction to cluster)")
    return np.ascontiguousarray(x / norms)
