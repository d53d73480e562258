"""A recipe is checked whole before its first step: every stage's parts, template, data, image
mode, label quirk, batch arithmetic and every number, each as one line naming its dotted path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fovea.errors import ConfigError
from fovea.train.loop import train
from fovea.train.recipe import load_recipe

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"

# override -> what the one-line error must say (each one used to train stage 0 first, or to
# train wrongly, or to end in a traceback)
STATIC = {
    "stages.1.train={foo: 1.0e-3}": "stages.1.train: unknown part 'foo'",
    "stages.1.train={lm: -1}": "stages.1.train.lm: learning rate must be a positive number",
    "stages.1.template=qwen_9": "stages.1.template: unknown template 'qwen_9'",
    "stages.1.image_mode=anyres_max_x": "stages.1.image_mode: image mode 'anyres_max_x'",
    "stages.1.micro_batch_size=3": "stages.1.micro_batch_size: must divide batch_size 16",
    "stages.1.label_quirk=bogus": "stages.1.label_quirk: must be one of",
    "stages.1.grad_clip=-1": "stages.1.grad_clip: must be positive (null: no clipping)",
    "stages.1.epochs=0": "stages.1.epochs: must be positive",
    "stages.1.epochs=-1": "stages.1.epochs: must be positive",
    "stages.1.max_steps=-5": "stages.1.max_steps: must be at least 1",
    "stages.1.batch_size=0": "stages.1.batch_size: must be at least 1",
    "stages.1.warmup_ratio=2": "stages.1.warmup_ratio: must be in [0, 1]",
    "run.save_every=0": "run.save_every: must be at least 1",
    "run.log_every=0": "run.log_every: must be at least 1",
    "model.template=chatml": "model.template: unknown template 'chatml'",
    "model.max_length=0": "model.max_length: must be at least 1",
}


@pytest.mark.parametrize("override", list(STATIC))
def test_every_stage_is_checked_when_the_recipe_loads(override):
    with pytest.raises(ConfigError) as err:
        load_recipe(TINY, [override])
    assert STATIC[override] in str(err.value) and "\n" not in str(err.value)


def test_a_typo_suggests_the_part_meant():
    with pytest.raises(ConfigError, match="did you mean 'connector'"):
        load_recipe(TINY, ["stages.1.train={conector: 1.0e-3}"])


def test_missing_data_fails_before_anything_is_written(tmp_path):
    recipe = load_recipe(TINY, [f"run.out_dir={tmp_path / 'run'}", "stages.0.data=/nonexistent.json"])
    with pytest.raises(ConfigError, match="stages.0.data: /nonexistent.json: no such data file"):
        train(recipe)
    assert not (tmp_path / "run").exists()


def test_the_last_stage_s_typo_fails_in_seconds_from_the_cli(tmp_path):
    """Stage 0's data is real; stage 1's path is wrong: nothing trains, nothing is written."""
    from fovea.data.synthetic import generate

    qa, captions = generate(tmp_path / "data", 32)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fovea.cli", "train", str(TINY), f"run.out_dir={out}"]
        + [f"stages.0.data={captions}", f"stages.1.data={tmp_path / 'typo.json'}"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "stages.1.data" in err and not out.exists()


def test_check_flag_checks_everything_and_writes_nothing(tmp_path, capsys):
    from fovea.cli import main
    from fovea.data.synthetic import generate

    qa, captions = generate(tmp_path / "data", 16)
    out = tmp_path / "run"
    args = ["train", str(TINY), f"run.out_dir={out}", f"stages.0.data={captions}", f"stages.1.data={qa}"]
    assert main([*args, "--check"]) == 0
    printed = capsys.readouterr().out
    assert "stage 1 finetune" in printed and ": OK (2 stages" in printed and not out.exists()
    assert main([*args, "stages.1.train={lm: 0}", "--check"]) == 2
    assert "stages.1.train.lm: learning rate must be a positive number" in capsys.readouterr().err


def test_a_started_run_resumes_only_with_its_own_recipe(tmp_path):
    from fovea.data.synthetic import generate

    qa, captions = generate(tmp_path / "data", 16)
    base = [f"run.out_dir={tmp_path / 'run'}", f"stages.0.data={captions}", f"stages.1.data={qa}"]
    base += ["stages.0.max_steps=1", "stages.1.max_steps=1", "stages.0.batch_size=4", "stages.1.batch_size=4"]
    train(load_recipe(TINY, base))
    train(load_recipe(TINY, [*base, "run.progress=false"]))  # display settings may change
    with pytest.raises(
        ConfigError, match=r"started with another recipe \(stages\.1\.train\.lm: 0\.001 then, 0\.01 now\)"
    ):
        train(load_recipe(TINY, [*base, "stages.1.train.lm=1.0e-2"]))
