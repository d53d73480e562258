"""`fovea pretrain propose`: a RICE region manifest from SAM's masks and PP-OCR's words."""

from __future__ import annotations

from .options import positive_float, positive_int, probability


def add_command(steps) -> None:
    p = steps.add_parser(
        "propose",
        help="RICE region proposals: SAM masks (objects) and PP-OCR words (text), written as a region manifest",
        description=(
            "Run SAM (transformers' SamModel, any checkpoint) as its automatic mask generator does (a grid of "
            "point prompts, predicted-IoU and stability filters, box NMS) and/or PP-OCR (rapidocr, models "
            "shipped in its wheel: offline; pip install 'fovea[ocr]') over DATA, and write OUT/regions.jsonl, "
            "the region manifest `fovea pretrain regions` reads. Regions with an edge under --min-edge are "
            "left out and counted; an unreadable image is named and counted. Shards under torchrun; a rerun "
            "finishes what a killed run left."
        ),
        epilog="example: torchrun --nproc_per_node 8 -m fovea.cli pretrain propose --sam facebook/sam-vit-huge "
        "--ocr 'laion/{00000..00999}.tar' --out proposals",
    )
    p.add_argument(
        "data", nargs="+", metavar="DATA", help="image folders, file lists, tar shards or patterns"
    )
    p.add_argument("--out", required=True, help="output folder (new, or one to resume)")
    p.add_argument("--sam", metavar="MODEL", help="SAM checkpoint directory or hub id: object masks")
    p.add_argument(
        "--ocr",
        nargs="?",
        type=probability,
        const=0.7,
        metavar="CONFIDENCE",
        help="read words with PP-OCR, keeping those at this confidence or more (default when given: 0.7, RICE's)",
    )
    p.add_argument(
        "--min-edge",
        type=float,
        default=128.0,
        help="leave out regions with a shorter edge, px (default: 128)",
    )
    p.add_argument("--points-per-side", type=positive_int, default=32, help="SAM's point grid (default: 32)")
    p.add_argument(
        "--points-per-batch", type=positive_int, default=64, help="prompts per SAM call (default: 64)"
    )
    p.add_argument(
        "--iou-threshold", type=probability, default=0.88, help="SAM's predicted IoU (default: 0.88)"
    )
    p.add_argument(
        "--stability-threshold", type=probability, default=0.95, help="SAM's stability score (default: 0.95)"
    )
    p.add_argument("--nms-threshold", type=positive_float, default=0.7, help="box IoU for NMS (default: 0.7)")
    p.add_argument(
        "--chunk-size", type=positive_int, default=4096, help="loose images per part (default: 4096)"
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..pretrain.proposals import SamSettings, propose

    sam = None
    if args.sam:
        sam = SamSettings(args.sam, points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                          iou_threshold=args.iou_threshold, stability_threshold=args.stability_threshold,
                          nms_threshold=args.nms_threshold)  # fmt: skip
    summary = propose(args.data, args.out, sam=sam, ocr=args.ocr, min_edge=args.min_edge,
                      chunk_size=args.chunk_size, device=args.device, progress=not args.quiet)  # fmt: skip
    if summary is None:
        return 0
    skipped = (
        f", {len(summary['skipped'])} unreadable image(s) named in proposals.json"
        if summary["skipped"]
        else ""
    )
    print(f"{summary['regions']} regions in {summary['images']} images ({summary['small']} under "
          f"--min-edge left out{skipped}) -> {summary['manifest']}")  # fmt: skip
    return 0
