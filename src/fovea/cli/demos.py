"""`fovea demo pretrain | rice`: the encoder-pretraining demos, offline on a CPU in minutes."""

from __future__ import annotations

from .options import positive_float, positive_int


def add_pretrain_demo(which) -> None:
    p = which.add_parser(
        "pretrain",
        help="offline, CPU, minutes: cluster-discrimination pretraining (MLCD vs single label) end to end",
        description=(
            "Generate multi-object scenes, make teacher features (an oracle that sees the objects, standing in "
            "for CLIP), cluster them, assign multi-label (MLCD) and single labels (UNICOM), train a tiny ViT "
            "each way for several seeds, and probe each encoder on which objects a scene holds. No network."
        ),
    )
    p.add_argument("--out", default="runs/demo-pretrain", help="output directory (default: %(default)s)")
    p.add_argument(
        "--images", type=positive_int, default=3000, help="pretraining images (default: %(default)s)"
    )
    p.add_argument("--centres", type=positive_int, default=64, help="k-means centres (default: %(default)s)")
    p.add_argument(
        "--labels", type=positive_int, default=4, help="MLCD labels per image (default: %(default)s)"
    )
    p.add_argument(
        "--steps", type=positive_int, default=300, help="training steps per encoder (default: %(default)s)"
    )
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per method (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_pretrain_demo)


def _run_pretrain_demo(args) -> int:
    from ..pretrain.demo import report, run_pretrain_demo

    result = run_pretrain_demo(
        args.out,
        images=args.images,
        centres=args.centres,
        labels=args.labels,
        steps=args.steps,
        seeds=tuple(range(args.seeds)),
        progress=not args.quiet,
    )
    print(
        f"\nwhich objects does a scene hold? linear probe on frozen features, {args.seeds} seeds:\n{report(result)}"
    )
    print("\nteacher: an oracle (a noisy sum of one random vector per object drawn), standing in for CLIP")
    print(f"results: {result.out / 'results.json'}; trained towers: {result.out / 'runs'}/*/tower")
    return 0


def add_rice_demo(which) -> None:
    p = which.add_parser(
        "rice",
        help="offline, CPU, minutes: RICE region-level pretraining against image-level MLCD, region probe",
        description=(
            "Generate scenes of objects and written words with their regions (boxes, polygons, RLE masks), "
            "label images (an oracle teacher standing in for CLIP, k-means, MLCD labels) and regions (fovea "
            "pretrain regions, the region oracle, k-means; the words' token ids), train the same tiny "
            "RICE-architecture ViT with image-level MLCD only and with RICE's region losses, same steps, for "
            "several seeds, and compare them by the region probe (object kind, which word) on held-out scenes. "
            "The last line names the exported RICE tower. No network."
        ),
    )
    p.add_argument("--out", default="runs/demo-rice", help="output directory (default: %(default)s)")
    p.add_argument(
        "--images", type=positive_int, default=1500, help="pretraining images (default: %(default)s)"
    )
    p.add_argument(
        "--steps", type=positive_int, default=400, help="training steps per encoder (default: %(default)s)"
    )
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds per method (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_rice_demo)


def _run_rice_demo(args) -> int:
    from ..pretrain.rice_demo import report, run_rice_demo

    result = run_rice_demo(args.out, images=args.images, steps=args.steps, seeds=tuple(range(args.seeds)),
                           progress=not args.quiet)  # fmt: skip
    print(f"\nregion probe (linear, on ROI-pooled patch tokens of held-out scenes), {args.seeds} seeds:")
    print(report(result))
    print("\nteachers: oracles (what the scene / the region holds), standing in for CLIP; words: token ids")
    print(f"results: {result.out / 'results.json'}; probes: {result.out / 'probes'}")
    print(f"tower: {result.towers['RICE, image + region losses'][0]}")
    return 0


def add_seg_demo(which) -> None:
    p = which.add_parser(
        "seg",
        help="offline, CPU, minutes: referring segmentation ([SEG] + SAM) trained, cIoU against a constant mask",
        description=(
            "Generate referring scenes ('Segment the red circle left of the square.' with the shape's mask), "
            "give a tiny random model MLCD-Seg's [SEG] token and a tiny random SAM (image encoder frozen), train "
            "it on LM cross-entropy + 2.0 x BCE + 0.5 x Dice, and score held-out scenes as MLCD-Seg scores "
            "RefCOCO (teacher-forced; cIoU, gIoU) against the best constant mask. Writes one overlay PNG; the "
            "last line names the checkpoint (`fovea segment --model` takes it). No network."
        ),
    )
    p.add_argument("--out", default="runs/demo-seg", help="output directory (default: %(default)s)")
    p.add_argument(
        "--train-size", type=positive_int, default=2000, help="training scenes (default: %(default)s)"
    )
    p.add_argument(
        "--eval-size", type=positive_int, default=200, help="held-out scenes (default: %(default)s)"
    )
    p.add_argument("--epochs", type=positive_float, default=8.0, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_seg_demo)


def _run_seg_demo(args) -> int:
    from ..seg_demo import report, run_seg_demo

    result = run_seg_demo(args.out, train_size=args.train_size, eval_size=args.eval_size, epochs=args.epochs,
                          seed=args.seed, progress=not args.quiet)  # fmt: skip
    threshold = result.scores["best constant mask"]["threshold"]
    print(
        f"\nheld-out referring segmentation, teacher-forced as MLCD-Seg's RefCOCO protocol ({args.eval_size} scenes):"
    )
    print(report(result))
    print(f"\nconstant mask: the pixels set in at least {threshold:.0%} of the training masks")
    print(f"overlay: {result.overlay}")
    print(f"checkpoint: {result.checkpoint}")
    return 0
