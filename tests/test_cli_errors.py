"""Every subcommand driven with bad values: exit status 2, one line, never a traceback, and
nothing is written where a refusal happens."""

from __future__ import annotations

from pathlib import Path

import pytest

from fovea.tiny import tiny_vlm

from cli_checks import refused

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
IMAGE = Path(__file__).parents[1] / "examples" / "images" / "shapes.png"
TOWER = ["--tower", "clip-vit-l14-336-tiny", "--random-weights", "--quiet"]

# argv (CKPT and OUT stand for a tiny checkpoint and a fresh path) -> what the line must say
CASES = {
    "unknown flag": (["list", "--bogus"], "unrecognized arguments: --bogus"),
    "not a number": (["chat", "--temperature", "warm"], "argument --temperature: invalid float value"),
    "demo size": (
        ["demo", "--out", "OUT", "--train-size", "0"],
        "argument --train-size: must be at least 1, got 0",
    ),
    "demo epochs": (
        ["demo", "--out", "OUT", "--epochs", "-1"],
        "argument --epochs: must be positive, got -1",
    ),
    "chat tokens": (
        ["chat", "--model", "CKPT", "--prompt", "hi", "--max-new-tokens", "0"],
        "argument --max-new-tokens: must be at least 1",
    ),
    "chat temperature": (
        ["chat", "--model", "CKPT", "--prompt", "hi", "--temperature", "-1"],
        "argument --temperature: must be 0 or more",
    ),
    "chat top-p": (
        ["chat", "--model", "CKPT", "--prompt", "hi", "--top-p", "0"],
        "argument --top-p: must be in (0, 1]",
    ),
    "chat model": (["chat", "--model", "/nonexistent/model", "--prompt", "hi"], "/nonexistent/model"),
    "train recipe": (["train", "/nonexistent.yaml"], "/nonexistent.yaml"),
    "train override": (["train", str(TINY), "stages.9.epochs=1"], "stages.9"),
    "data check": (["data", "check", "/nonexistent.json"], "/nonexistent.json"),
    "data synth": (["data", "synth", "OUT", "--size", "0"], "argument --size: must be at least 1"),
    "extract image": (["extract", *TOWER, "/nonexistent.png", "--out", "OUT"], "/nonexistent.png"),
    "extract batch": (
        ["extract", *TOWER, str(IMAGE), "--batch-size", "0", "--out", "OUT"],
        "argument --batch-size: must be at least 1",
    ),
    "extract layer": (["extract", *TOWER, str(IMAGE), "--layer", "99", "--out", "OUT"], "layer"),
    "convert source": (["convert", "/nonexistent/ckpt", "OUT"], "/nonexistent/ckpt"),
    "convert shard": (["convert", "CKPT", "OUT", "--max-shard-size", "huge"], "--max-shard-size"),
    "eval task": (["eval", "--model", "CKPT", "--tasks", "nope", "--out", "OUT"], "unknown task 'nope'"),
    "eval limit": (
        ["eval", "--model", "CKPT", "--tasks", "synth_colour", "--limit", "-1", "--out", "OUT"],
        "argument --limit: must be at least 1",
    ),
    "eval batch": (
        ["eval", "--model", "CKPT", "--batch-size", "0", "--out", "OUT"],
        "argument --batch-size: must be at least 1",
    ),
    "eval report": (["eval", "report", "/nonexistent/run"], "/nonexistent/run"),
    "bench convert": (["bench", "convert", "openeqa", "/nonexistent/src", "OUT"], "/nonexistent/src"),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_vlm().save_pretrained(tmp_path_factory.mktemp("cli") / "model")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_values_are_one_line(case, checkpoint, tmp_path, capsys):
    argv, expected = CASES[case]
    out = tmp_path / "out"
    argv = [str(checkpoint) if a == "CKPT" else str(out) if a == "OUT" else a for a in argv]
    err = refused(argv, capsys)
    assert expected in err
    assert not out.exists()  # a refusal writes nothing
