"""`fovea segment`: masks for what a prompt refers to, with a model that has MLCD-Seg's [SEG] path."""

from __future__ import annotations

import json
from pathlib import Path

from .options import add_template_option, positive_int, user_error


def add_commands(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="referring segmentation: masks of what the prompt names (a model with a [SEG] token and SAM)",
        description=(
            "Ask a segmenting model (MLCD-Seg's layout, or a fovea model trained with seg) about an image. Its "
            "answer is printed; each [SEG] in it becomes a mask, written to OUT as mask-K.png (white inside, "
            "the image's size) with overlay.png (every mask over the image) and segment.json (prompt, answer, "
            "mask files and areas). --force adds a [SEG] when the answer has none, as benchmarks ask."
        ),
        epilog="example: fovea segment --model runs/demo-seg/checkpoint --image scene.png "
        "--prompt 'segment the red circle' --out masks",
    )
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--image", required=True, help="image file")
    p.add_argument("--prompt", required=True, help="what to segment, e.g. 'segment the red circle'")
    p.add_argument("--out", required=True, help="output folder (new, or one fovea segment wrote)")
    p.add_argument(
        "--force", action="store_true", help="always give a mask: add [SEG] if the answer has none"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="(default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    add_template_option(p)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..checkpoints import load
    from ..imaging.io import load_image
    from ..seg.model import segment
    from ..seg.pictures import write_pictures

    if not args.prompt.strip():
        raise user_error("--prompt is empty: say what to segment")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "segment.json").is_file())):
        raise user_error(f"{out}: exists and was not written by fovea segment; choose another --out")
    image = load_image(Path(args.image))  # a bad image fails here, before the model loads
    model = load(args.model, device=args.device)
    result = segment(model, image, args.prompt, template=args.template or "default",
                     max_new_tokens=args.max_new_tokens, force=args.force)  # fmt: skip
    for stale in out.glob("mask-*.png") if out.is_dir() else ():
        stale.unlink()  # this command's own files from an earlier run
    files = write_pictures(out, image, result.masks)
    record = {"image": str(args.image), "prompt": args.prompt, "answer": result.text,
              "masks": [{"file": f.name, "pixels": int(m.sum())} for f, m in zip(files, result.masks)]}  # fmt: skip
    (out / "segment.json").write_text(json.dumps(record, indent=2) + "\n")
    print(result.text)
    print(f"{len(result.masks)} mask(s), {image.width}x{image.height} -> {out}")
    return 0 if len(result.masks) or not args.force else 1
