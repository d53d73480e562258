"""The ``fovea`` command: one console script, one small function per subcommand.

Errors a user can cause (a bad image, an unknown preset, a broken checkpoint, a missing file)
print one line, ``fovea: error: ...``, and exit with status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

EXIT_USER_ERROR = 2
_EXTRAS = {
    "fastapi": "serve",
    "uvicorn": "serve",
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
}


def main(argv: list[str] | None = None) -> int:
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
    from . import evaluate, models, pipeline, pretrain

    for module in (pipeline, models, evaluate, pretrain):
        module.add_commands(sub)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


def user_error(message: str):
    from ..errors import ConfigError

    return ConfigError(message)


def chat_template(model, name: str | None) -> str:
    """`--template NAME`, or the model's own template; an error naming --template when it has none."""
    name = name or "default"
    if model.chat_format(name) is None:
        raise user_error(
            f"this model has no chat template of its own: pass --template NAME "
            f"(one of {', '.join(model.template_choices())})"
        )
    return name


def add_template_option(parser) -> None:
    from ..model.templates import CHECKPOINT_TEMPLATE, TEMPLATES

    parser.add_argument(
        "--template",
        help=f"chat template: {', '.join(TEMPLATES)}, or {CHECKPOINT_TEMPLATE} (a transformers checkpoint's "
        "own Jinja template) (default: the model's own)",
    )


def add_recipe_arguments(parser, check_help: str) -> None:
    """RECIPE, its dotted overrides and --check: the same for `fovea train` and `fovea pretrain train`."""
    parser.add_argument("recipe", help="YAML recipe")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides (leading -- optional)")
    parser.add_argument("--check", action="store_true", help=check_help)


# -- flag types: a value out of range is argparse's own one-line error, naming the flag ----------


def _number(kind, test, wanted: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, lambda v: v >= 1, "at least 1")
positive_float = _number(float, lambda v: v > 0, "positive")
non_negative_float = _number(float, lambda v: v >= 0, "0 or more")
probability = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")
