"""`fovea pretrain region-probe`: how well any tower's patch tokens tell labelled regions apart."""

from __future__ import annotations

from pathlib import Path

from .pretrain_probe import neighbour_counts


def add_command(steps) -> None:
    p = steps.add_parser(
        "region-probe",
        help="region classification by ROI-pooled patch tokens of any tower (RICE, MLCD, CLIP, SigLIP ...)",
        description=(
            "For every labelled region of the --train and --val region manifests (objects: their 'label'; OCR "
            "regions: their 'label', else their text) in the images of DATA, take the mean of the tower's "
            "last-layer patch tokens the region sees on the image's square view (RICE's visibility rule), "
            "L2-normalised, and score objects and OCR regions apart: logistic regression (C chosen on a "
            "held-out fifth) and weighted k-NN. Writes OUT/region_probe.json and OUT/region_probe.md; "
            "OUT/train and OUT/val are resumable region folders naming every region left out."
        ),
        epilog="example: fovea pretrain region-probe --tower rice-vit-l14-560 coco/val2017 --train "
        "regions-train.jsonl --val regions-val.jsonl --out probe-rice",
    )
    p.add_argument(
        "data", nargs="+", metavar="DATA", help="image folders, file lists, tar shards or patterns"
    )
    p.add_argument("--tower", required=True, help="preset name (see `fovea list`), hub id or tower directory")
    p.add_argument("--train", required=True, metavar="MANIFEST", help="region manifest (.jsonl) to fit on")
    p.add_argument("--val", required=True, metavar="MANIFEST", help="region manifest (.jsonl) to score on")
    p.add_argument("--out", required=True, help="output folder (new, or one to resume)")
    p.add_argument(
        "--min-edge",
        type=float,
        default=0.0,
        help="leave out regions with a shorter edge, px (default: none)",
    )
    p.add_argument(
        "--ks", type=neighbour_counts, default="10,20", help="k-NN neighbour counts (default: %(default)s)"
    )
    p.add_argument(
        "--random-weights", action="store_true", help="the tower's architecture with random weights"
    )
    p.add_argument("--weights", help="tower weights file in any published form; TOWER gives the architecture")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..pretrain.region_probe import region_probe, table
    from ..pretrain.teacher import TeacherSpec

    for flag, path in (("--train", args.train), ("--val", args.val)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such region manifest")
    tower = TeacherSpec(args.tower, pretrained=not args.random_weights, weights=args.weights)
    result = region_probe(tower, args.data, args.train, args.val, args.out, min_edge=args.min_edge,
                          ks=args.ks, device=args.device, progress=not args.quiet)  # fmt: skip
    print(table(result))
    return 0
