"""`fovea pretrain cluster | assign`: pseudo-classes from teacher features, and each image's labels."""

from __future__ import annotations

import json
from pathlib import Path

from . import positive_int, user_error


def add_commands(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="vision-encoder pretraining by cluster discrimination (UNICOM / MLCD)"
    )
    steps = p.add_subparsers(metavar="STEP", required=True)
    cluster = steps.add_parser(
        "cluster",
        help="spherical k-means of teacher features into K pseudo-classes (faiss)",
        description="Cluster FEATS, an (N, D) .npy of teacher features, into K centres by spherical k-means "
        "(faiss, every feature used, seeded). Writes OUT/centres.npy ((K, D) float32, L2-normalised) and "
        "OUT/cluster.json (iterations, objective, mean cosine, empty and imbalanced clusters).",
    )
    cluster.add_argument("features", metavar="FEATS")
    cluster.add_argument("--centres", type=positive_int, required=True, metavar="K", help="number of centres")
    cluster.add_argument("--out", required=True, help="output folder")
    cluster.add_argument("--iterations", type=positive_int, default=20, help="(default: %(default)s)")
    cluster.add_argument(
        "--restarts",
        type=positive_int,
        default=1,
        help="runs from different starts, best kept (default: %(default)s)",
    )
    cluster.add_argument("--seed", type=int, default=0)
    cluster.add_argument("--gpu", action="store_true", help="run faiss on the GPUs (faiss-gpu)")
    cluster.set_defaults(func=_run_cluster)
    assign = steps.add_parser(
        "assign",
        help="each image's L most similar centres (exact): MLCD's labels, or UNICOM's with L = 1",
        description="For every row of FEATS, its L most similar centres by cosine, exactly (chunked matrix "
        "products). Writes OUT/labels.npy ((N, L) int64, most similar first) and OUT/similarities.npy.",
    )
    assign.add_argument("features", metavar="FEATS")
    assign.add_argument("--centres", required=True, help="a folder written by `fovea pretrain cluster`")
    assign.add_argument("--labels", type=positive_int, default=8, metavar="L", help="(default: %(default)s)")
    assign.add_argument("--out", required=True, help="output folder")
    assign.set_defaults(func=_run_assign)


def _run_cluster(args) -> int:
    from ..pretrain.cluster import spherical_kmeans

    features = _load(Path(args.features))
    out = _output(Path(args.out), "cluster.json")
    centres, report = spherical_kmeans(
        features, args.centres, iterations=args.iterations, seed=args.seed, gpu=args.gpu
    )
    _save(out / "centres.npy", centres)
    _write(out / "cluster.json", json.dumps(report.as_dict(), indent=2))
    print(
        f"{report.points} features -> {report.centres} centres in {report.iterations} iterations; "
        f"mean cosine {report.mean_cosine:.4f}; {report.empty} empty; sizes {report.smallest}..{report.largest}"
    )
    return 0


def _run_assign(args) -> int:
    import torch

    from ..pretrain.assign import top_centres

    features = _load(Path(args.features))
    centres = _load(Path(args.centres) / "centres.npy")
    out = _output(Path(args.out), "assign.json")
    ids, sims = top_centres(torch.from_numpy(features), torch.from_numpy(centres), args.labels)
    _save(out / "labels.npy", ids.numpy())
    _save(out / "similarities.npy", sims.numpy())
    _write(out / "assign.json", json.dumps({"features": str(args.features), "labels": args.labels}))
    print(f"{len(ids)} images, {args.labels} labels each -> {out / 'labels.npy'}")
    return 0


def _load(path: Path):
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise user_error(f"{path}: not a .npy array ({err})") from None
    if array.ndim != 2:
        raise user_error(f"{path}: expected an (N, D) array, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _output(out: Path, marker: str) -> Path:
    """OUT may be new, or a folder this step wrote before (it holds `marker`)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).is_file())):
        raise user_error(f"{out}: exists and was not written by this step; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _save(path: Path, array) -> None:
    import numpy as np

    from ..atomic import write_atomic

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.save would add ".npy" to a path
            np.save(f, array)

    write_atomic(path, write)


def _write(path: Path, text: str) -> None:
    from ..atomic import write_text_atomic

    write_text_atomic(path, text)
