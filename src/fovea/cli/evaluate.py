"""`fovea eval` and `fovea bench`: benchmark runs, reports and benchmark-data converters."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..dtypes import SHORT_NAMES
from .options import add_template_option, non_negative_float, positive_int, probability, user_error

DEFAULT_DATA_ROOT = "~/.cache/fovea/benchmarks"


def add_commands(sub) -> None:
    _add_eval(sub)
    _add_bench(sub)


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="score a model on benchmarks with pinned protocols; `eval report RUN...` compares runs",
        description=(
            "Generate answers for benchmark tasks and score them as the published protocols do "
            "(lmms-eval 0.7.2 for ChartQA, DocVQA, InfoVQA, OCRBench, MME, MMMU; MLCD-Embodied for RoboVQA "
            "and OpenEQA). Every answered sample is appended to RUN/<task>/samples.jsonl as it is made: "
            "run the same command again after a stop and it continues where it was. Bad samples (a "
            "missing image, a malformed row) are listed in RUN/<task>/errors.jsonl and the rest is scored. "
            "Results: RUN/results.json, RUN/results.md and, with 3+ tasks, RUN/radar.png. Several "
            "processes: accelerate launch -m fovea.cli eval ... (each takes every N-th sample)."
        ),
        epilog=(
            "examples:\n"
            "  fovea eval --tasks synthetic                      # the bundled offline benchmark, demo model\n"
            "  fovea eval --model ckpt --tasks chartqa,mme --data-root /data/benchmarks\n"
            "  fovea eval --model ckpt --tasks openeqa --judge-url http://localhost:8000/v1 --judge-model m\n"
            "  fovea eval report runs/eval/a runs/eval/b --radar cmp.png\n"
            "  fovea eval --list"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action", nargs="?", choices=["report"], help="`report RUN...`: put finished runs side by side"
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run directories (for report)")
    p.add_argument("--model", help="checkpoint directory or hub id (default: the `fovea demo` model)")
    p.add_argument(
        "--tasks",
        default="synthetic",
        help="comma-separated tasks or groups, or task YAML paths (default: %(default)s)",
    )
    p.add_argument(
        "--data-root",
        default=os.environ.get("FOVEA_DATA", DEFAULT_DATA_ROOT),
        help="folder holding the benchmarks, one sub-folder per task (default: $FOVEA_DATA or %(default)s)",
    )
    _add_run_options(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    p.add_argument("--dtype", choices=SHORT_NAMES, help="load the model in this dtype")
    add_template_option(p)
    p.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.0,
        help="sample at this temperature instead of the protocols' greedy decoding (default: %(default)s)",
    )
    p.add_argument("--top-p", type=probability, default=1.0, help="with --temperature (default: %(default)s)")
    p.add_argument("--seed", type=int, help="with --temperature: every answer's sampling seed")
    _add_judge_options(p)
    p.add_argument(
        "--radar", help="report: write the radar chart here (default: radar.png beside --report-out)"
    )
    p.add_argument("--report-out", help="report: write the Markdown table here (default: print it)")
    p.add_argument(
        "--list", action="store_true", help="list the built-in tasks and groups with their protocols"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_eval)


def _add_run_options(p) -> None:
    p.add_argument(
        "--out",
        help="run directory (default: runs/eval/<model name>); reusing it resumes the same model's run",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (only the files fovea wrote there) instead of resuming it",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=8, help="prompts generated together (default: %(default)s)"
    )
    p.add_argument("--limit", type=positive_int, help="only the first N samples of each task")
    p.add_argument(
        "--hub", action="store_true", help="download a task's data from the hub when it is not local"
    )


def _add_judge_options(p) -> None:
    p.add_argument("--judge-url", help="OpenAI-compatible endpoint (…/v1) of the LLM-Match judge (OpenEQA)")
    p.add_argument(
        "--judge-model", default="gpt-4-1106-preview", help="judge model name (default: %(default)s)"
    )
    p.add_argument(
        "--judge-key-env",
        default="OPENAI_API_KEY",
        help="environment variable with the judge's key (default: %(default)s)",
    )


def _run_eval(args) -> int:
    if args.list:
        return _list_tasks()
    if args.action == "report":
        return _report(args)
    if args.runs:
        raise user_error(
            f"unexpected arguments {args.runs}; did you mean `fovea eval report {' '.join(args.runs)}`?"
        )
    from ..eval.runner import evaluate
    from ..eval.tasks import expand, load_task

    names = expand([t.strip() for t in args.tasks.split(",") if t.strip()])
    for name in names:
        load_task(name)  # an unknown task fails before the model loads
    source, model = _load_model(args)
    template = args.template or "default"
    model.chat_format(template)  # an unknown template fails before any work
    if model.template_note(template) and not args.quiet:
        print(model.template_note(template), file=sys.stderr)
    name = Path(source.rstrip("/")).name
    out = Path(args.out or Path("runs/eval") / name)
    judge = None
    if args.judge_url:
        from ..eval.judge import LLMJudge

        judge = LLMJudge(args.judge_url, args.judge_model, os.environ.get(args.judge_key_env, ""))
    results = evaluate(
        model,
        names,
        out,
        args.data_root,
        batch_size=args.batch_size,
        limit=args.limit,
        hub=args.hub,
        judge=judge,
        model_name=name,
        progress=not args.quiet,
        template=template,
        overwrite=args.overwrite,
        sampling=_sampling(args),
    )
    if not results:  # not the main process
        return 0
    _summarise(results, out, name)
    return 1 if any(res.get("failed") for res in results["tasks"].values()) else 0


def _sampling(args) -> dict | None:
    """`model.generate`'s sampling arguments, or None for greedy (the published protocols)."""
    if args.temperature <= 0:
        return None
    return {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}


def _load_model(args):
    import torch

    from ..checkpoints import dtype_from_name, load
    from ..infer.chat import DEMO_CHECKPOINT

    source = args.model or str(DEMO_CHECKPOINT)
    if args.model is None and not (DEMO_CHECKPOINT / "config.json").is_file():
        raise user_error("no --model given and no demo model found; run `fovea demo` or pass --model DIR")
    dtype = dtype_from_name(args.dtype)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per process, never sharded
    return source, load(source, dtype=dtype, device=device)


def _summarise(results: dict, out: Path, name: str) -> None:
    from ..eval.report import radar

    print((out / "results.md").read_text().split("\n\n")[0])
    for task, res in results["tasks"].items():
        if res.get("failed"):
            print(f"{task}: failed: {res['failed']}", file=sys.stderr)
        if res["errors"]:
            print(
                f"{task}: {res['errors']} sample(s) could not run; see {out / task / 'errors.jsonl'}",
                file=sys.stderr,
            )
        for note in res["notes"]:
            print(f"{task}: {note}", file=sys.stderr)
    if len(results["tasks"]) >= 3:
        radar([{**results, "name": name}], out / "radar.png", title=name)
    print(
        f"\nresults: {out / 'results.json'}, {out / 'results.md'}"
        + (f", {out / 'radar.png'}" if len(results["tasks"]) >= 3 else "")
    )


def _report(args) -> int:
    from ..eval.report import load_results, markdown, radar

    if not args.runs:
        raise user_error("`fovea eval report` needs at least one RUN directory")
    runs = [load_results(r) for r in args.runs]
    table = markdown(runs)
    if args.report_out:
        Path(args.report_out).write_text(table)
        print(f"wrote {args.report_out}")
    else:
        print(table)
    target = args.radar or (str(Path(args.report_out).with_name("radar.png")) if args.report_out else None)
    if target:
        print(f"wrote {radar(runs, target)}")
    return 0


def _list_tasks() -> int:
    from ..eval.tasks import GROUPS, available, load_task

    for name in available():
        print(f"{name:16s} {load_task(name).protocol}")
    for group, members in GROUPS.items():
        print(f"{group:16s} group: {', '.join(members)}")
    return 0


# -- bench convert -----------------------------------------------------------------------------


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="prepare benchmark data: `bench convert openeqa|robovqa SRC OUT` writes the evaluation parquet",
        description=(
            "Convert the embodied benchmarks' released files into the parquet files `fovea eval` (and the "
            "MLCD-Embodied scripts) read. openeqa: SRC holds open-eqa-v0.json and frames/<episode>/*-rgb.png; "
            "up to 32 evenly spaced frames per episode are copied. robovqa: SRC holds the validation "
            "TFRecord files (val*); every other frame is saved as JPEG, one row per question."
        ),
    )
    bsub = p.add_subparsers(dest="bench_command", metavar="ACTION", required=True)
    c = bsub.add_parser("convert", help="openeqa | robovqa released data -> parquet + images")
    c.add_argument("benchmark", choices=["openeqa", "robovqa"])
    c.add_argument("source", metavar="SRC", help="the downloaded benchmark folder")
    c.add_argument(
        "out", metavar="OUT", help="output folder, e.g. <data-root>/OpenEQA or <data-root>/RoboVQA"
    )
    c.add_argument(
        "--frames",
        type=positive_int,
        default=32,
        help="openeqa: frames kept per episode (default: %(default)s)",
    )
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_run_bench_convert)


def _run_bench_convert(args) -> int:
    from ..eval import convert

    fn = {"openeqa": convert.openeqa, "robovqa": convert.robovqa}[args.benchmark]
    kwargs = {"frames": args.frames} if args.benchmark == "openeqa" else {}
    report = fn(args.source, args.out, progress=not args.quiet, **kwargs)
    for path, rows in report.files.items():
        print(f"wrote {path} ({rows} rows)")
    for problem in report.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    return 0
