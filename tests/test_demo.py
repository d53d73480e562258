"""A short `fovea demo` with fixed seeds learns the easy question types well above chance."""

from __future__ import annotations

import fovea
from fovea.cli import main
from fovea.data.synthetic import chance
from fovea.demo import run_demo


def test_short_demo_beats_chance_on_colour_and_shape(tmp_path):
    result = run_demo(
        tmp_path, train_size=2000, eval_size=200, epochs=3, kinds=("colour", "shape"), progress=False
    )
    assert result.accuracy["colour"] > 3 * chance("colour")  # 60% against 20%
    assert result.accuracy["shape"] > chance("shape") + 0.15  # 48% against 33%
    model = fovea.load(result.checkpoint)  # the demo's checkpoint is an ordinary fovea checkpoint
    assert model.config.template == "qwen_1_5"


def test_demo_command_prints_the_table_and_how_to_use_it(tmp_path, capfd):
    """...and nothing else: no library warning (FutureWarning, deprecations, accelerate's note on
    tied weights at every save) that a user could do nothing about."""
    assert (
        main(
            [
                "demo",
                "--out",
                str(tmp_path),
                "--train-size",
                "120",
                "--eval-size",
                "12",
                "--epochs",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    out, err = capfd.readouterr()
    for noise in ("Warning", "deprecated", "Removed shared tensor"):
        assert noise not in out + err
    assert "| question type | answers | chance | held-out accuracy |" in out
    assert "fovea.load(" in out and "checkpoint:" in out
