"""The ``fovea`` command: one console script, one small function per subcommand.

Errors a user can cause (a bad image, an unknown preset, a broken checkpoint, a missing file)
print one line, ``fovea: error: ...``, and exit with status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_USER_ERROR = 2
_EXTRAS = {
    "fastapi": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "peft": "train",
    "tensorboard": "train",
    "wandb": "wandb",
    "deepspeed": "deepspeed",
    "datasets": "eval",
    "pyarrow": "eval",
    "matplotlib": "eval",
    "openai": "eval",
    "tfrecord": "eval",
    "faiss": "pretrain",
    "sklearn": "pretrain",
    "rapidocr": "ocr",
    "onnxruntime": "ocr",
    "av": "video",
}


def main(argv: list[str] | None = None) -> int:
    from ..threads import configure

    configure()  # before anything loads torch: idle OpenMP threads sleep, threads fit the CPUs
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a bad flag (one line, see _Parser)
        return int(stop.code or 0)
    logging.basicConfig(level=logging.WARNING, format="fovea: %(message)s")
    from ..errors import FoveaError

    try:
        return args.func(args)
    except (FoveaError, FileNotFoundError) as err:
        print(f"fovea: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ModuleNotFoundError as err:
        extra = _EXTRAS.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"fovea: error: this command needs {err.name!r}: pip install 'fovea[{extra}]'", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("fovea: interrupted", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line like every other fovea error (no usage block)."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fovea",
        description="Multimodal LLMs whose strength is their vision: towers, AnyRes, LLaVA-NeXT models.",
    )
    parser.add_argument("--version", action="version", version=f"fovea {_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    from . import evaluate, models, pipeline, pretrain, segment

    for module in (pipeline, models, segment, evaluate, pretrain):
        module.add_commands(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__
