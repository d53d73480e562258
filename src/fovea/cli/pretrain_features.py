"""`fovea pretrain features`: teacher embeddings of image folders, file lists and tar shards."""

from __future__ import annotations

from .options import positive_int


def add_command(steps) -> None:
    p = steps.add_parser(
        "features",
        help="teacher embeddings (pooled, L2-normalised, float16) of many images, for clustering",
        description=(
            "Embed every image of DATA with a teacher tower and write FEATS, a folder of float16 parts and "
            "an index (features.json) that `fovea pretrain cluster` and `assign` read. DATA: image folders "
            "(a sidecar NAME.txt is a caption), file lists (.txt/.tsv, PATH or PATH<TAB>CAPTION a line), "
            "or img2dataset WebDataset tar shards (a brace pattern like shards/{00000..00099}.tar works). "
            "Each image's id is stable; a bad image is skipped, logged and listed in its part. "
            "Run it under torchrun to share the work (process r takes chunks r, r+world, ...); rerun the "
            "same command after a kill to finish: finished parts are kept, never recomputed."
        ),
        epilog="example: torchrun --nproc_per_node 8 -m fovea.cli pretrain features --tower clip-vit-l14-336 "
        "'laion/{00000..00999}.tar' --out feats",
    )
    p.add_argument(
        "data", nargs="+", metavar="DATA", help="image folders, file lists, tar shards or patterns"
    )
    p.add_argument(
        "--tower",
        required=True,
        help="teacher: a tower preset (see `fovea list`), hub id or tower directory (its pooled output), "
        "or a two-tower CLIP directory (its projected image embedding)",
    )
    p.add_argument("--out", required=True, metavar="FEATS", help="output folder (new, or one to resume)")
    p.add_argument(
        "--joint",
        action="store_true",
        help="UNICOM's joint image+text features: normalise(normalise(image) + normalise(caption)); needs "
        "a two-tower CLIP directory and captions (images without one are skipped)",
    )
    _add_teacher_flags(p)
    _add_run_flags(p)
    p.set_defaults(func=_run_features)


def add_regions_command(steps) -> None:
    p = steps.add_parser(
        "regions",
        help="RICE: teacher features of object regions and token ids of OCR regions, from a region manifest",
        description=(
            "For the images of DATA that the region manifest lists (JSON Lines: image id, objects as boxes, "
            "COCO RLE masks or polygons, OCR regions as box + text), write OUT: one teacher feature per object "
            "region (the FEATS format, so `fovea pretrain cluster` and `assign` label the regions), and the "
            "token ids of each OCR region's text. Regions with an edge under --min-edge are dropped and "
            "counted; bad manifest lines, unreadable images and unusable regions are named in OUT/manifest.json "
            "and the parts. Shards under torchrun and resumes like `fovea pretrain features`."
        ),
        epilog="example: fovea pretrain regions --manifest regions.jsonl --tower clip-vit-l14-336 "
        "--tokenizer Qwen/Qwen2.5-7B-Instruct 'laion/{00000..00999}.tar' --out regions",
    )
    p.add_argument(
        "data", nargs="+", metavar="DATA", help="image folders, file lists, tar shards or patterns"
    )
    p.add_argument("--manifest", required=True, help="the region manifest (.jsonl), keyed by the images' ids")
    p.add_argument(
        "--tower", required=True, help="teacher: a tower preset, hub id, tower or two-tower CLIP directory"
    )
    p.add_argument("--out", required=True, metavar="REGIONS", help="output folder (new, or one to resume)")
    p.add_argument(
        "--pool",
        choices=["crop", "roi"],
        default="crop",
        help="crop: the teacher embeds each region cut from the image (default); roi: the mean of the "
        "teacher's patch tokens the region sees, one tower call per image",
    )
    p.add_argument(
        "--min-edge",
        type=float,
        default=128.0,
        help="drop regions with a shorter edge, px (default: RICE's 128)",
    )
    p.add_argument(
        "--tokenizer", help="tokenizer directory or hub id for OCR texts (none: OCR regions unlabelled)"
    )
    p.add_argument(
        "--ocr-labels",
        type=positive_int,
        default=10,
        metavar="M",
        help="token ids kept per OCR region (default: 10)",
    )
    _add_teacher_flags(p)
    _add_run_flags(p)
    p.set_defaults(func=_run_regions)


def _add_teacher_flags(p) -> None:
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="the tower's architecture with random weights, seeded (for trying things offline); a teacher "
        "is pretrained by default",
    )
    p.add_argument(
        "--weights", help="tower weights file in any published form; TOWER then gives the architecture"
    )
    p.add_argument(
        "--view",
        choices=["square", "pad"],
        default="square",
        help="square: the tower's own preprocessing (CLIP crops, SigLIP squashes; default); "
        "pad: the whole image padded to a square with the mean colour, as LLaVA does",
    )


def _add_run_flags(p) -> None:
    p.add_argument(
        "--batch-size", type=positive_int, default=64, help="images per tower call (default: %(default)s)"
    )
    p.add_argument(
        "--chunk-size",
        type=positive_int,
        default=4096,
        help="loose images (folders, lists) per part; a tar shard is always one part (default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="the tower's precision; features are stored float16 either way (default: %(default)s)",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present, one GPU per process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_regions(args) -> int:
    from ..pretrain.region_features import RegionRows

    rows = RegionRows(
        args.manifest,
        pool=args.pool,
        min_edge=args.min_edge,
        tokenizer=args.tokenizer,
        ocr_labels=args.ocr_labels,
    )
    return _run_features(args, rows)


def _run_features(args, rows=None) -> int:
    from ..pretrain.features import compute_features
    from ..pretrain.teacher import TeacherSpec

    teacher = TeacherSpec(
        args.tower,
        pretrained=not args.random_weights,
        weights=args.weights,
        joint=getattr(args, "joint", False),
        view=args.view,
        dtype=args.dtype,
    )
    summary = compute_features(
        teacher,
        args.data,
        args.out,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        device=args.device,
        progress=not args.quiet,
        rows=rows,
    )
    if summary is None:  # not process 0: it writes the index and reports
        return 0
    rate = summary.images / summary.seconds if summary.seconds > 0 else 0.0
    skipped = f", {summary.skipped} skipped (listed in the parts)" if summary.skipped else ""
    what = "object regions" if rows is not None else "images"
    print(
        f"{summary.images} {what}{skipped} -> {summary.path}: {summary.dim}-d float16 features in "
        f"{summary.parts} parts ({summary.computed} computed here); {summary.seconds:.1f} s, {rate:.1f} {what}/s"
    )
    return 1 if summary.images == 0 else 0
