"""What several subcommands share: their common options, flag types and the user-error shape.

Flag types make a value out of range argparse's own one-line error, naming the flag.
"""

from __future__ import annotations

import argparse
import math


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
