"""`fovea pretrain cluster | assign`: pseudo-classes from teacher features, and each image's labels."""

from __future__ import annotations

from pathlib import Path

from . import pretrain_features, pretrain_probe, pretrain_propose, pretrain_region_probe
from .options import positive_int
from .pretrain_train import add_command as add_train


def add_commands(sub) -> None:
    p = sub.add_parser(
        "pretrain", help="vision-encoder pretraining by cluster discrimination (UNICOM, MLCD, RICE)"
    )
    steps = p.add_subparsers(metavar="STEP", required=True)
    cluster = steps.add_parser(
        "cluster",
        help="spherical k-means of teacher features into K pseudo-classes (faiss)",
        description="Cluster FEATS (a folder of `fovea pretrain features`, or an (N, D) .npy) into K centres by spherical k-means "
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
    cluster.add_argument(
        "--levels",
        choices=["1", "2", "auto"],
        default="auto",
        help="1: k-means over all K centres; 2: hierarchical, about sqrt(K) coarse cells each split into "
        "centres in proportion to its size (far faster for large K); auto: 2 from 100,000 centres on "
        "(default: %(default)s)",
    )
    cluster.add_argument("--seed", type=int, default=0)
    cluster.add_argument(
        "--gpu",
        action="store_true",
        help="run faiss on every GPU it sees (a GPU build of faiss; CUDA_VISIBLE_DEVICES chooses them)",
    )
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
    pretrain_features.add_command(steps)
    pretrain_propose.add_command(steps)
    pretrain_features.add_regions_command(steps)
    add_train(steps)
    pretrain_probe.add_command(steps)
    pretrain_region_probe.add_command(steps)


def _run_cluster(args) -> int:
    from ..pretrain.steps import cluster_features

    report = cluster_features(
        args.features,
        args.centres,
        args.out,
        iterations=args.iterations,
        restarts=args.restarts,
        seed=args.seed,
        gpu=args.gpu,
        levels=None if args.levels == "auto" else int(args.levels),
    )
    levels = f" ({report.coarse_centres} coarse cells)" if report.levels == 2 else ""
    print(
        f"{report.points} features -> {report.centres} centres{levels} in {report.iterations} iterations; "
        f"mean cosine {report.mean_cosine:.4f}; {report.empty} empty; sizes {report.smallest}..{report.largest}"
    )
    return 0


def _run_assign(args) -> int:
    from ..pretrain.steps import assign_labels

    images, _ = assign_labels(args.features, args.centres, args.labels, args.out)
    print(f"{images} images, {args.labels} labels each -> {Path(args.out) / 'labels.npy'}")
    return 0
