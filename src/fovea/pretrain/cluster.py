"""Spherical k-means over teacher features with faiss: the pseudo-classes of UNICOM and MLCD.

Every feature counts: faiss subsamples to 256 points per centroid by default, which at a million
centres silently drops most of the data, so `max_points_per_centroid` is set to the whole set.
Starting points are greedy k-means++ seeds (each new one far from those chosen, from a sample of
64 points per centre) while that costs little next to k-means itself; for very large K, faiss's
random starts, which `restarts` can repeat. Runs are seeded and reproducible. The report says what a user needs to trust the clusters:
iterations, faiss's objective per iteration, the mean cosine of each feature to its centre, and
how many clusters came out empty or oversized.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError


@dataclass
class ClusterReport:
    points: int
    dim: int
    centres: int
    iterations: int
    objective: list[float]
    """faiss's objective after each iteration (for spherical k-means: the summed similarities)."""
    mean_cosine: float
    """Mean cosine of every feature to its own centre."""
    empty: int
    largest: int
    smallest: int
    imbalance: float
    """faiss's imbalance factor: 1.0 is perfectly even cluster sizes."""
    init: str
    """How the centres started: "kmeans++" or "random" (faiss's, for very large K)."""
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def spherical_kmeans(
    features: np.ndarray, k: int, *, iterations: int = 20, restarts: int = 1, seed: int = 0, gpu: bool = False
) -> tuple[np.ndarray, ClusterReport]:
    """(N, D) features -> (K, D) float32 L2-normalised centres and the report. k-means finds a local
    optimum from its start; `restarts` runs it from that many seeds and keeps the best (highest
    mean cosine of the features to their centres)."""
    x = _unit(features)
    if not 1 <= k <= len(x):
        raise ConfigError(f"--centres must be between 1 and the {len(x)} features, got {k}")
    start = time.perf_counter()
    runs = [_run(x, k, iterations, seed + i, gpu) for i in range(restarts)]
    centres, report = max(runs, key=lambda run: run[1].mean_cosine)
    report.seconds = time.perf_counter() - start
    return centres, report


def _run(x: np.ndarray, k: int, iterations: int, seed: int, gpu: bool) -> tuple[np.ndarray, ClusterReport]:
    import faiss

    kmeans = faiss.Kmeans(
        x.shape[1], k, niter=iterations, spherical=True, seed=seed, gpu=gpu, verbose=False,
        max_points_per_centroid=len(x), min_points_per_centroid=1,
    )  # fmt: skip
    seeds = _kmeanspp(x, k, seed) if _plusplus_is_cheap(len(x), k, x.shape[1]) else None
    kmeans.train(x, init_centroids=seeds)
    centres = _unit(kmeans.centroids)
    _, assigned = kmeans.index.search(x, 1)
    sizes = np.bincount(assigned[:, 0], minlength=k)
    return centres, ClusterReport(
        points=len(x),
        dim=x.shape[1],
        centres=k,
        iterations=len(kmeans.obj),
        objective=[float(v) for v in kmeans.obj],
        mean_cosine=float((x * centres[assigned[:, 0]]).sum(1).mean()),
        empty=int((sizes == 0).sum()),
        largest=int(sizes.max()),
        smallest=int(sizes.min()),
        imbalance=float(kmeans.iteration_stats[-1]["imbalance_factor"]),
        init="kmeans++" if seeds is not None else "random",
        seconds=0.0,
    )


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
