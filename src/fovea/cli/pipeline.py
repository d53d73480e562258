"""`fovea demo | chat | serve | train | data`: the commands that run the pipeline."""

from __future__ import annotations

import logging
import sys

from . import demos
from .options import (
    add_recipe_arguments,
    add_template_option,
    non_negative_float,
    positive_float,
    positive_int,
    probability,
)
from .options import chat_template as _chat_template
from .options import user_error as _user_error


def add_commands(sub) -> None:
    _add_demo(sub)
    _add_chat(sub)
    _add_serve(sub)
    _add_train(sub)
    _add_data(sub)


# -- demo / train / data -----------------------------------------------------------------------


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="offline, CPU, minutes: synthesise data, train a tiny VLM in two stages, evaluate it",
        description=(
            "Generate a synthetic image-QA set (shapes, colours, counts, positions, words, bar charts), train "
            "a tiny LLaVA-NeXT-style model through two stages (align, finetune), report held-out accuracy per "
            "question type against chance, save the checkpoint and answer one question. No network needed."
        ),
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default: %(default)s)")
    p.add_argument(
        "--train-size", type=positive_int, default=7000, help="training samples (default: %(default)s)"
    )
    p.add_argument(
        "--eval-size", type=positive_int, default=600, help="held-out samples (default: %(default)s)"
    )
    p.add_argument(
        "--epochs", type=positive_float, default=4.0, help="finetuning epochs (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_demo)
    which = p.add_subparsers(metavar="DEMO", required=False, title="other demos")
    demos.add_pretrain_demo(which)
    demos.add_rice_demo(which)
    demos.add_seg_demo(which)


def _run_demo(args) -> int:
    from ..demo import report, run_demo

    result = run_demo(
        args.out,
        train_size=args.train_size,
        eval_size=args.eval_size,
        epochs=args.epochs,
        seed=args.seed,
        progress=not args.quiet,
    )
    sample = result.sample
    print(f"\nheld-out accuracy ({args.eval_size} questions):\n{report(result)}")
    print(f"\nsample: {sample['path']}\n  Q: {sample['conversations'][0]['value'].split(chr(10))[-1]}")
    print(f"  model: {sample['model_answer']!r}   expected: {sample['answer']!r}")
    print(f"\ncheckpoint: {result.checkpoint}")
    print(f"chat with it:\n  fovea chat --model {result.checkpoint} --image {sample['path']}")
    print("use it from Python:")
    print(f"  import fovea; m = fovea.load({str(result.checkpoint)!r})")
    print(f"  m.generate('What colour is the shape?', images=[{sample['path']!r}])")
    return 0


def _add_chat(sub) -> None:
    p = sub.add_parser(
        "chat",
        help="talk to a model about images (interactive, or one shot with --prompt)",
        description=(
            "Chat with a model. Interactive: image paths are asked when the history is empty "
            "(comma-separated), then 'User:' turns; 'reset' clears the history, 'exit' quits. "
            "With --prompt the answer is printed once ('-' reads the prompt from stdin). Images without "
            "<image> tags are placed before the text. Without --model, the `fovea demo` model is used."
        ),
        epilog="example: fovea chat --model runs/demo/train/stage-1-finetune/final --image a.png --prompt 'What shape is it?'",
    )
    p.add_argument("--model", help="checkpoint directory or hub id (default: the demo's model if present)")
    p.add_argument("--image", default="", help="image paths, comma-separated")
    p.add_argument(
        "--video",
        default="",
        help="video paths, comma-separated: frames sampled as LLaVA-NeXT does (1 per second, at most 32), "
        "pooled; placed by <video> tags, else before the text (needs fovea[video])",
    )
    p.add_argument("--prompt", help="answer this once and exit ('-': read from stdin)")
    add_template_option(p)
    p.add_argument(
        "--temperature", type=non_negative_float, default=0.2, help="0 = greedy (default: %(default)s)"
    )
    p.add_argument(
        "--top-p", type=probability, default=0.95, help="nucleus sampling mass (default: %(default)s)"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=512, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, help="seed for sampling")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.set_defaults(func=_run_chat)


def _run_chat(args) -> int:
    from pathlib import Path

    import torch

    from ..checkpoints import load
    from ..infer.chat import DEMO_CHECKPOINT, one_shot, repl, split_images

    source = args.model
    if source is None:
        if not (DEMO_CHECKPOINT / "config.json").is_file():
            raise _user_error(
                "no --model given and no demo model found; run `fovea demo` or pass --model DIR"
            )
        source = str(DEMO_CHECKPOINT)
    prompt = _stdin_prompt() if args.prompt == "-" else args.prompt  # a bad stdin fails before loading
    for video in split_images(args.video):  # before minutes of loading
        if not Path(video).is_file():
            raise _user_error(f"--video {video}: no such video file")
    if args.seed is not None:
        torch.manual_seed(args.seed)
    model = load(source, device=args.device)
    options = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "template": _chat_template(model, args.template),
    }
    images, videos = split_images(args.image), split_images(args.video)
    if prompt is not None:
        one_shot(model, prompt, images, options, videos=videos)
    else:
        repl(model, images, options, videos=videos)
    return 0


def _stdin_prompt() -> str:
    """`--prompt -`: stdin as UTF-8, read as bytes so a bad byte is one line, not a traceback."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # stdin replaced by a text stream (embedding, tests): already decoded
        return sys.stdin.read()
    data = stream.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _user_error(
            f"--prompt -: stdin is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # the newlines text-mode stdin gave


SERVE_LIMITS = [
    ("--max-images", int, 8, "images per request"),
    ("--max-pixels", int, 16_000_000, "pixels per image"),
    ("--max-videos", int, 1, "video_url parts per request"),
    ("--max-video-frames", int, 32, "frames taken from a video at most, spread evenly when it has more"),
    ("--max-tokens", int, 1024, "largest max_tokens accepted"),
    (
        "--max-tokens-default",
        int,
        None,
        "a request without max_tokens gets what the context leaves after its prompt, at most this many "
        "(default: --max-tokens)",
    ),
    ("--max-body-mb", float, 32, "largest request body"),
    (
        "--max-inflight-mpixels",
        float,
        256,
        "megapixels of decoded images held by all requests together; one that does not fit waits its "
        "turn, and a full queue is a 429 (about 1 GiB at the default, as Pillow holds 4 bytes a pixel)",
    ),
    ("--image-workers", int, 2, "threads that fetch, decode and tile images, apart from text requests"),
    (
        "--drain-timeout",
        float,
        30.0,
        "on SIGTERM or Ctrl-C, seconds the answers in flight have to finish before each ends with a "
        "clean error (new requests get a 503 at once)",
    ),
    ("--max-batch", int, 16, "requests decoded together"),
]
"""`fovea serve`'s numeric settings: (flag, type, default, help); each must be a positive number."""


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="OpenAI-compatible chat server (/v1/chat/completions, /v1/models, /health, /metrics)",
        description=(
            "Serve a model over OpenAI's chat API: images as data: URLs in image_url parts (remote URLs and "
            "local files only when enabled), streaming by SSE, concurrent requests batched together. Binds "
            "to 127.0.0.1 unless --host says otherwise."
        ),
        epilog="example: fovea serve --model runs/demo/train/stage-1-finetune/final --port 8000 --api-key secret",
    )
    p.add_argument("--model", required=True, help="checkpoint directory or hub id")
    p.add_argument("--name", help="model id clients ask for (default: the directory name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    p.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs")
    p.add_argument(
        "--allow-private-image-hosts",
        action="store_true",
        help="with --allow-remote-images, fetch from loopback/private/link-local addresses too "
        "(off: a request cannot make the server read its own network)",
    )
    p.add_argument("--image-dir", help="allow local image paths inside this directory")
    add_template_option(p)
    for flag, kind, default, text in SERVE_LIMITS:
        shown = "" if default is None else " (default: %(default)s)"
        p.add_argument(flag, type=kind, default=default, help=text + shown)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> int:
    from pathlib import Path

    import prometheus_client  # noqa: F401  (the [serve] extra, asked for before the model loads)
    import uvicorn  # noqa: F401

    from ..checkpoints import load
    from ..infer.requests import Limits
    from ..infer.server import ServeConfig, make_server

    _check_serve_args(args)
    model = load(args.model, device=args.device)
    template = _chat_template(model, args.template)  # no template: an error now, not a 400 per request
    limits = Limits(
        max_images=args.max_images,
        max_videos=args.max_videos,
        max_video_frames=args.max_video_frames,
        max_pixels=args.max_pixels,
        max_tokens=args.max_tokens,
        default_max_tokens=args.max_tokens_default,
        allow_remote_images=args.allow_remote_images,
        private_image_hosts=args.allow_private_image_hosts,
        image_dir=Path(args.image_dir) if args.image_dir else None,
    )
    config = ServeConfig(
        name=args.name or Path(args.model).name,
        api_key=args.api_key,
        max_body_bytes=int(args.max_body_mb * 2**20),
        limits=limits,
        max_batch=args.max_batch,
        template=template,
        max_inflight_pixels=int(args.max_inflight_mpixels * 1e6),
        image_workers=args.image_workers,
    )
    print(f"serving {config.name!r} on http://{args.host}:{args.port}/v1 (Ctrl-C to stop)")
    import logging

    logging.getLogger("fovea.infer.server").setLevel(logging.INFO)  # one line per request
    if model.template_note(template):
        print(model.template_note(template))
    make_server(model, config, args.host, args.port, args.drain_timeout).run()
    return 0


def _check_serve_args(args) -> None:
    """Flag errors before the model loads (minutes for a 7B), each one line naming its flag."""
    import math
    from pathlib import Path

    if not 1 <= args.port <= 65535:
        raise _user_error(f"--port {args.port}: expected a port number from 1 to 65535")
    flags = [flag.removeprefix("--").replace("-", "_") for flag, *_ in SERVE_LIMITS]
    for flag in flags:
        value = getattr(args, flag)
        if value is None:  # optional flags not given
            continue
        if not (value > 0 and math.isfinite(value)):  # NaN fails `> 0`; inf has no byte count
            raise _user_error(f"--{flag.replace('_', '-')} {value}: expected a positive number")
    if args.image_dir is not None and not Path(args.image_dir).is_dir():
        found = "not a directory" if Path(args.image_dir).exists() else "no such directory"
        raise _user_error(f"--image-dir {args.image_dir}: {found}")


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="staged training from a YAML recipe (one process, or many with accelerate/torchrun)",
        description=(
            "Train the stages of RECIPE (see configs/). Overrides use dotted keys, e.g. "
            "--run.out_dir=runs/x --stages.0.max_steps=100. A restarted run resumes from its newest "
            "checkpoint. For several GPUs: accelerate launch -m fovea.cli train RECIPE (or torchrun)."
        ),
    )
    add_recipe_arguments(
        p,
        "check the whole recipe (every stage's numbers, parts, templates, data files) and exit, "
        "writing nothing and loading no model",
    )
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    import os

    from ..train.recipe import load_recipe
    from ..train.validate import check_files

    recipe = load_recipe(args.recipe, args.overrides)
    if args.check:
        check_files(recipe, int(os.environ.get("WORLD_SIZE", "1")))
        for i, stage in enumerate(recipe.stages):
            length = f"{stage.max_steps} steps" if stage.max_steps else f"{stage.epochs:g} epochs"
            parts = ", ".join(f"{part} {lr:g}" for part, lr in stage.train.items())
            print(f"stage {i} {stage.name}: {stage.data}, {length} of {stage.batch_size}, trains {parts}")
        print(
            f"{args.recipe}: OK ({len(recipe.stages)} stages; parts are matched to the model when it is built)"
        )
        return 0
    from ..train.loop import train

    logging.getLogger("fovea").setLevel(logging.INFO)
    final = train(recipe)
    print(f"final checkpoint: {final}")
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="check training data, or synthesise some")
    data_sub = p.add_subparsers(metavar="ACTION", required=True)
    check = data_sub.add_parser(
        "check",
        help="report every problem of a dataset before a run",
        description="Read every record of DATA (.json, .jsonl or a .yaml mixture) and report each one that a "
        "training run would skip: missing or unreadable images, tag/image count mismatches, empty turns.",
    )
    check.add_argument("data")
    check.add_argument("--image-root", help="image folder (default: each data file's directory)")
    check.add_argument(
        "--decode", action="store_true", help="also decode every image (slower, catches corrupt files)"
    )
    check.set_defaults(func=_run_data_check)
    synth = data_sub.add_parser("synth", help="write a synthetic image-QA dataset (LLaVA format)")
    synth.add_argument("out")
    synth.add_argument("--size", type=positive_int, default=1000, help="records (default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_run_data_synth)


def _run_data_check(args) -> int:
    from ..data.check import check_data

    report = check_data(args.data, image_root=args.image_root, decode=args.decode)
    for problem in report.problems:
        print(problem)
    print(f"{report.total} records, {len(report.problems)} with problems, {report.images} images checked")
    return 1 if report.problems else 0


def _run_data_synth(args) -> int:
    from ..data.synthetic import generate

    qa, captions = generate(args.out, args.size, seed=args.seed)
    print(f"wrote {qa} and {captions}")
    return 0
