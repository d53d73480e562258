"""`fovea pretrain train RECIPE.yaml`: train a vision encoder by cluster discrimination."""

from __future__ import annotations

import logging

from .options import add_recipe_arguments


def add_command(steps) -> None:
    p = steps.add_parser(
        "train",
        help="train a vision encoder by cluster discrimination (MLCD multi-label or UNICOM margin softmax)",
        description=(
            "Train the encoder of RECIPE (see configs/pretrain/*.yaml) on the images of a FEATS folder with "
            "the labels of `fovea pretrain assign`, through PartialFC. Overrides use dotted keys, e.g. "
            "--optim.max_steps=100 --loss.type=margin. A restarted run resumes from its newest checkpoint "
            "(with the same number of processes). For several GPUs: torchrun --nproc_per_node N -m "
            "fovea.cli pretrain train RECIPE. The result, OUT/tower, is a tower for `fovea train` "
            "(model.tower: OUT/tower), `fovea extract` and `fovea pretrain probe`."
        ),
    )
    add_recipe_arguments(
        p, "check the recipe, its features and labels and exit, writing nothing and building no model"
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..pretrain.recipe import load_pretrain_recipe

    recipe = load_pretrain_recipe(args.recipe, args.overrides)
    if args.check:
        return _check(args.recipe, recipe)
    from ..pretrain.train import train_encoder

    logging.getLogger("fovea").setLevel(logging.INFO)
    tower = train_encoder(recipe)
    print(f"trained tower: {tower}")
    return 0


def _check(path: str, recipe) -> int:
    from ..pretrain.train import read_data

    refs, labels, classes = read_data(recipe)
    print(
        f"{path}: OK: {len(refs)} images, {labels.shape[1]} labels each, {classes} classes, "
        f"loss {recipe.loss.type} at sample rate {recipe.loss.sample_rate:g}"
    )
    return 0
