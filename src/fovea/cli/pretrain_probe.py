"""`fovea pretrain probe`: linear probe, k-NN and retrieval R@1 of any tower's frozen features."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .options import positive_float, positive_int, user_error


def add_command(steps) -> None:
    p = steps.add_parser(
        "probe",
        help="linear probe, k-NN and retrieval R@1 of a tower's frozen features (ImageFolder splits)",
        description=(
            "Extract every image's pooled, L2-normalised feature (the tower's pooler_output) from the "
            "--train and --val ImageFolders (DIR/CLASS/IMAGE; classes are --train's first-level folders, "
            "sorted) and score them: logistic regression (scikit-learn's LBFGS, or torch's on CUDA), "
            "DINOv2/UNICOM's weighted k-NN (T = 0.07) and UNICOM's leave-one-out Recall@1 on --val. "
            "An unreadable image is skipped, named and counted. Writes OUT/probe.json and OUT/probe.md."
        ),
        epilog="example: fovea pretrain probe --tower mlcd-vit-l14-336 --train cub/train --val cub/val --out probe-mlcd",
    )
    p.add_argument("--tower", required=True, help="preset name (see `fovea list`), hub id or tower directory")
    p.add_argument("--train", required=True, metavar="DIR", help="training split: DIR/CLASS/IMAGE")
    p.add_argument(
        "--val", required=True, metavar="DIR", help="validation split, with classes among --train's"
    )
    p.add_argument("--out", required=True, help="output folder (new, or one this step wrote)")
    p.add_argument(
        "--methods",
        type=_methods,
        default="linear,knn,retrieval",
        help="comma-separated, any of linear, knn, retrieval (default: %(default)s)",
    )
    _add_method_flags(p)
    _add_tower_flags(p)
    p.set_defaults(func=_run_probe)


def _add_method_flags(p) -> None:
    p.add_argument(
        "--ks",
        type=neighbour_counts,
        default="10,20,100,200",
        help="k-NN neighbour counts (default: %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=positive_float,
        default=0.07,
        help="k-NN vote temperature (default: %(default)s)",
    )
    p.add_argument(
        "--C",
        type=positive_float,
        help="logistic-regression inverse L2 strength, e.g. 0.601 (UNICOM's example); default: chosen "
        "on a held-out fifth of --train over 1e-6..1e6 (CLIP's protocol)",
    )
    p.add_argument(
        "--max-iter", type=positive_int, default=1000, help="LBFGS iterations (default: %(default)s)"
    )
    p.add_argument(
        "--solver",
        choices=["auto", "sklearn", "torch"],
        default="auto",
        help="linear probe: torch's LBFGS when --device is a GPU, else scikit-learn's (default: %(default)s)",
    )


def _add_tower_flags(p) -> None:
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="images per tower call (default: %(default)s)"
    )
    p.add_argument("--device", help="torch device (default: cuda when present, else cpu)")
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="the tower's architecture with random weights (no download; a baseline, or for trying things)",
    )
    p.add_argument(
        "--weights", help="tower weights file in any published form; TOWER then gives the architecture"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _methods(text: str) -> tuple[str, ...]:
    from ..pretrain.probe import METHODS

    names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(METHODS)}, got {text!r}")
    return names


def neighbour_counts(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(positive_int(k.strip()) for k in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated counts of 1 or more, got {text!r}"
        ) from None
    return tuple(sorted(set(ks)))


def _run_probe(args) -> int:
    from ..atomic import write_text_atomic
    from ..pretrain.probe import ProbeConfig, probe
    from ..pretrain.steps import output_folder

    for flag, folder in (("--train", args.train), ("--val", args.val)):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{flag} {folder}: no such directory")
    _check_sklearn(args)  # before hours of feature extraction, not after
    out = output_folder(Path(args.out), "probe.json")
    config = ProbeConfig(
        methods=args.methods,
        ks=args.ks,
        temperature=args.temperature,
        C=args.C,
        max_iter=args.max_iter,
        solver=args.solver,
        batch_size=args.batch_size,
        device=args.device,
    )
    result = probe(
        args.tower,
        Path(args.train),
        Path(args.val),
        config,
        pretrained=not args.random_weights,
        weights=args.weights,
        progress=not args.quiet,
    )
    table = markdown_table(result)
    write_text_atomic(out / "probe.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "probe.md", table)
    print(table, end="")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} unreadable image(s), named above", file=sys.stderr)
    return 0


def _check_sklearn(args) -> None:
    import importlib.util

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sklearn = args.solver == "sklearn" or (args.solver == "auto" and not device.startswith("cuda"))
    if "linear" in args.methods and sklearn and importlib.util.find_spec("sklearn") is None:
        raise user_error(
            "the linear probe needs scikit-learn: pip install 'fovea[pretrain]' (or --solver torch)"
        )


def markdown_table(result: dict) -> str:
    """The probe's numbers as a Markdown table, with the tower and data sizes above it."""
    train, val = result["train"], result["val"]
    lines = [
        f"`{result['tower']}` ({result['weights']} weights, {result['feature_dim']}-d pooled features): "
        f"train {train['used']} images, val {val['used']}, {len(result['classes'])} classes, "
        f"{len(result['skipped'])} skipped",
        "",
        "| method | setting | top-1 % | top-5 % |",
        "|---|---|---|---|",
    ]
    if "linear" in result:
        lin = result["linear"]
        how = "chosen on held-out train" if lin["search"] else "given"
        lines.append(f"| linear | C = {lin['C']:.3g} ({how}, {lin['solver']}) | {lin['accuracy']:.2f} | – |")
    for k, v in result.get("knn", {}).items():
        if k != "temperature":
            clamp = "" if v["neighbours"] == int(k) else f", clamped to {v['neighbours']}"
            top5 = f"{v['top5']:.2f}" if "top5" in v else "–"
            lines.append(
                f"| k-NN | k = {k}{clamp}, T = {result['knn']['temperature']} | {v['top1']:.2f} | {top5} |"
            )
    if "retrieval" in result:
        lines.append(f"| retrieval | R@1, val leave-one-out | {result['retrieval']['recall_at_1']:.2f} | – |")
    return "\n".join(lines) + "\n"
