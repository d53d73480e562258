"""The cluster and assign steps as folders: what `fovea pretrain cluster | assign` and the demo write.

    CENTRES/centres.npy       (K, D) float32, L2-normalised        CENTRES/cluster.json  the report
    LABELS/labels.npy         (N, L) int64, most similar first     LABELS/similarities.npy (N, L)
    LABELS/assign.json        which features, L, and K

An output folder may be new or one this step wrote before (it holds the step's JSON); anything
else is refused, so no option overwrites what fovea did not create.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_text_atomic
from ..errors import ConfigError
from .assign import top_centres
from .cluster import ClusterReport, spherical_kmeans
from .features import load_features, save_npy


def output_folder(out: Path, marker: str) -> Path:
    """OUT may be new, or a folder this step wrote before (it holds `marker`)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).is_file())):
        raise ConfigError(f"{out}: exists and was not written by this step; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def cluster_features(features: str | Path, k: int, out: str | Path, **options) -> ClusterReport:
    """Spherical k-means of FEATS (a folder or an (N, D) .npy) into K centres, written to `out`;
    `options` are `spherical_kmeans`'s (iterations, restarts, seed, gpu, levels)."""
    array = load_features(features).array
    folder = output_folder(Path(out), "cluster.json")
    centres, report = spherical_kmeans(array, k, **options)
    save_npy(folder / "centres.npy", centres)
    write_text_atomic(folder / "cluster.json", json.dumps(report.as_dict(), indent=2))
    return report


def assign_labels(features: str | Path, centres: str | Path, labels: int, out: str | Path) -> tuple[int, int]:
    """Each image's `labels` most similar centres, written to `out`; returns (images, K)."""
    array = load_features(features).array
    centres_file = Path(centres) / "centres.npy"
    if not centres_file.is_file():
        raise FileNotFoundError(f"{centres_file}: no such file (give a folder of `fovea pretrain cluster`)")
    table = load_features(centres_file).array
    folder = output_folder(Path(out), "assign.json")
    ids, sims = top_centres(torch.from_numpy(array), torch.from_numpy(table), labels)
    save_npy(folder / "labels.npy", ids.numpy())
    save_npy(folder / "similarities.npy", sims.numpy().astype(np.float32))
    info = {"features": str(features), "labels": labels, "centres": len(table)}
    write_text_atomic(folder / "assign.json", json.dumps(info))
    return len(ids), len(table)
