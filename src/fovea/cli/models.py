"""`fovea extract | convert | list`: the commands that read and write towers and checkpoints."""

from __future__ import annotations

import sys

from ..dtypes import SHORT_NAMES
from .options import positive_int
from .options import user_error as _user_error


def add_commands(sub) -> None:
    _add_extract(sub)
    _add_convert(sub)
    _add_list(sub)


# -- extract -----------------------------------------------------------------------------------


def _add_extract(sub) -> None:
    p = sub.add_parser(
        "extract",
        help="vision features of images from any tower, saved to safetensors",
        description=(
            "Run a vision tower over image files and folders and save one feature tensor per image "
            "(keyed by file name) to a safetensors file. TOWER is a preset (see `fovea list`), a hub id "
            "such as DeepGlint-AI/mlcd-vit-bigG-patch14-448, or a local transformers tower directory."
        ),
        epilog="example: fovea extract --tower mlcd-vit-bigg14-448 photos/ --pool cls --out feats.safetensors",
    )
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--tower", required=True, help="preset name, hub id or tower directory")
    p.add_argument(
        "--out",
        default="features.safetensors",
        help="output file, written atomically; never one of the images (default: %(default)s)",
    )
    p.add_argument(
        "--layer", type=int, default=-1, help="hidden state to take: 0 = embeddings, -1 = last (default)"
    )
    p.add_argument(
        "--pool",
        choices=["none", "cls", "mean"],
        default="none",
        help="none: every token (default); cls: the CLS token; mean: mean of patch tokens",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=16, help="images per tower call (default: %(default)s)"
    )
    p.add_argument(
        "--skip-bad", action="store_true", help="report and skip unreadable images instead of stopping"
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="build the tower's architecture with random weights (no download; for trying things offline)",
    )
    p.add_argument(
        "--weights",
        help="tower weights file in any published form (e.g. DeepGlint's original MLCD RoPE2D .pt); "
        "TOWER then only gives the architecture",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_extract)


def _run_extract(args) -> int:
    from ..extract import extract_features, find_images

    if not find_images(args.images):
        raise _user_error(f"no images found in {' '.join(args.images)}")
    result = extract_features(
        args.tower,
        args.images,
        pretrained=not args.random_weights,
        weights=args.weights,
        device=args.device,
        layer=args.layer,
        pool=args.pool,
        batch_size=args.batch_size,
        skip_bad=args.skip_bad,
        out=args.out,
        progress=not args.quiet,
    )
    shapes = sorted({tuple(t.shape) for t in result.features.values()})
    print(f"wrote {len(result.features)} feature tensors {_shapes(shapes)} to {args.out}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s), listed above", file=sys.stderr)
    return 1 if result.skipped and not result.features else 0


def _shapes(shapes: list[tuple]) -> str:
    return "of shape " + ", ".join("x".join(map(str, s)) for s in shapes) if shapes else ""


# -- convert -----------------------------------------------------------------------------------


def _add_convert(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint to transformers' LlavaNext format or to fovea's format",
        description=(
            "Read SRC in any layout fovea loads (fovea, transformers LlavaNext, original LLaVA-NeXT llava_*, "
            "stage-1 mm_projector.bin with --base) and write DST. `--to hf` gives a directory that "
            "transformers' LlavaNextForConditionalGeneration + AutoProcessor (and so vLLM/SGLang) load; "
            "parts LlavaNext cannot express are refused by name. Conversion streams shard by shard."
        ),
        epilog="example: fovea convert DeepGlint-AI/llava-mlcd-qwen2.5-7b ./llava-mlcd-hf --to hf --dtype bf16",
    )
    p.add_argument("source", metavar="SRC", help="checkpoint directory or hub id")
    p.add_argument(
        "destination",
        metavar="DST",
        help="output directory: new or empty, outside SRC (written to DST.partial, then renamed)",
    )
    p.add_argument("--to", choices=["hf", "fovea"], default="hf", help="output format (default: %(default)s)")
    p.add_argument("--dtype", choices=SHORT_NAMES, help="cast floating-point weights (default: keep)")
    p.add_argument(
        "--max-shard-size", default="2GB", help="largest output shard, e.g. 500MB, 2GB (default: %(default)s)"
    )
    p.add_argument("--base", help="base LM directory or hub id for a stage-1 output (mm_projector.bin only)")
    p.add_argument(
        "--tower", help="tower directory or preset overriding an original config's mm_vision_tower"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace DST when it is a model checkpoint (config.json naming a model, no subfolders); "
        "anything else is refused, never deleted",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from ..checkpoints import dtype_from_name
    from ..checkpoints.export import convert

    dtype = dtype_from_name(args.dtype)
    report = convert(
        args.source,
        args.destination,
        to=args.to,
        dtype=dtype,
        max_shard_size=_parse_size(args.max_shard_size),
        base=args.base,
        tower=args.tower,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    size = report.bytes / 2**30
    print(
        f"wrote {report.tensors} tensors ({size:.2f} GiB) in {report.shards} shard(s) to {report.destination}"
    )
    for note in report.notes:
        print(f"note: {note}")
    return 0


def _parse_size(text: str) -> int:
    units = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    upper = text.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if upper.endswith(unit):
            try:
                return int(float(upper[: -len(unit)]) * factor)
            except ValueError:
                break
    raise _user_error(f"--max-shard-size {text!r}: expected a size like 500MB or 2GB")


# -- list --------------------------------------------------------------------------------------


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="registered towers, presets, projectors, fusers and templates")
    p.set_defaults(func=_run_list)


def _run_list(args) -> int:
    from ..checkpoints.layouts import LAYOUTS
    from ..connectors.fusers import FUSERS
    from ..connectors.projectors import PROJECTORS
    from ..model.templates import CHECKPOINT_TEMPLATE, TEMPLATES
    from ..towers.base import TOWER_FAMILIES
    from ..towers.presets import TOWER_PRESETS

    sections = [
        ("tower presets", {n: _preset_line(TOWER_PRESETS, n) for n in TOWER_PRESETS}),
        ("tower types (transformers model_type)", {n: TOWER_FAMILIES.help(n) for n in TOWER_FAMILIES}),
        ("projectors", {n: PROJECTORS.help(n) for n in PROJECTORS}),
        ("checkpoint layouts", {n: LAYOUTS.help(n) for n in LAYOUTS}),
        ("fusers", {n: FUSERS.help(n) for n in FUSERS}),
        (
            "templates",
            {
                **{n: TEMPLATES.help(n) for n in TEMPLATES},
                CHECKPOINT_TEMPLATE: "a transformers checkpoint's own Jinja chat template, rendered as its processor does",
            },
        ),
    ]
    for title, rows in sections:
        print(f"{title}:")
        width = max(len(n) for n in rows)
        for name, text in rows.items():
            print(f"  {name:<{width}}  {text}")
        print()
    return 0


def _preset_line(registry, name: str) -> str:
    preset = registry.get(name)
    where = f" [{preset.hub_id}]" if preset.hub_id else ""
    return f"{registry.help(name)}{where}"
