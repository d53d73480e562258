"""The `fovea` command as a user runs it: extract, list, help, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from fovea.cli import main

from cli_checks import refused, snapshot

EXAMPLES = Path(__file__).parents[1] / "examples" / "images"
TOWER = ["--tower", "clip-vit-l14-336-tiny", "--random-weights", "--quiet"]


def test_extract_writes_named_features(tmp_path, capsys):
    out = tmp_path / "f.safetensors"
    assert (
        main(["extract", str(EXAMPLES), *TOWER, "--out", str(out), "--pool", "mean", "--batch-size", "2"])
        == 0
    )
    with safe_open(out, "pt") as f:
        assert sorted(f.keys()) == ["images/bar_chart.png", "images/shapes.png", "images/tall_poster.jpg"]
        assert f.get_tensor("images/shapes.png").shape == (32,)
        assert f.metadata()["pool"] == "mean"
    assert "wrote 3 feature tensors of shape 32" in capsys.readouterr().out


def test_bad_image_stops_with_one_line_and_keeps_what_was_done(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "f.safetensors"
    code = main(["extract", str(EXAMPLES / "shapes.png"), str(bad), *TOWER, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(bad) in err and "Traceback" not in err
    with safe_open(out, "pt") as f:
        assert list(f.keys()) == [str(EXAMPLES / "shapes.png")]


def test_skip_bad_reports_and_continues(tmp_path, capsys):
    bad = tmp_path / "empty.jpg"
    bad.write_bytes(b"")
    out = tmp_path / "f.safetensors"
    assert main(["extract", str(bad), str(EXAMPLES), *TOWER, "--out", str(out), "--skip-bad"]) == 0
    assert "skipped 1 unreadable image" in capsys.readouterr().err
    with safe_open(out, "pt") as f:
        assert len(f.keys()) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["extract", str(EXAMPLES), "--tower", "clip-vit-l14-337", "--random-weights"], "did you mean"),
        (["extract", "/no/such/dir", *TOWER], "no such image file"),
        (["extract", str(EXAMPLES), *TOWER, "--pool", "cls", "--layer", "9"], "layer 9 is outside"),
        (
            [
                "extract",
                str(EXAMPLES),
                "--tower",
                "siglip-so400m-384-tiny",
                "--random-weights",
                "--quiet",
                "--pool",
                "cls",
            ],
            "needs a tower with a CLS token",
        ),
    ],
)
def test_user_errors(args, message, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path / "f.safetensors")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in [
        "mlcd-vit-bigg14-448",
        "siglip-so400m-384-tiny",
        "mlp{N}x_gelu",
        "concat",
        "qwen_1_5",
        "llama3",
    ]:
        assert word in out


def test_console_script_error_has_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    proc = subprocess.run(
        [sys.executable, "-m", "fovea.cli", "extract", str(bad), *TOWER, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"fovea: error: {bad}: not a recognised image format"


@pytest.mark.parametrize("given", ["file", "folder"])
def test_extract_refuses_to_write_over_an_input_image(tmp_path, capsys, given):
    import shutil

    (tmp_path / "imgs").mkdir()
    image = shutil.copy(EXAMPLES / "shapes.png", tmp_path / "imgs" / "x.png")
    before = snapshot(tmp_path)
    source = image if given == "file" else tmp_path / "imgs"
    err = refused(["extract", str(source), *TOWER, "--out", str(image)], capsys)
    assert str(image) in err and "input" in err
    assert snapshot(tmp_path) == before


def test_extract_to_a_directory_fails_in_one_line_and_leaves_nothing(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("mine")
    before = snapshot(tmp_path)
    err = refused(["extract", str(EXAMPLES), *TOWER, "--out", str(tmp_path / "out")], capsys)
    assert str(tmp_path / "out") in err and "directory" in err
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_write_keeps_the_old_features_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    import fovea.extract

    out = tmp_path / "f.safetensors"
    assert main(["extract", str(EXAMPLES / "shapes.png"), *TOWER, "--out", str(out)]) == 0  # an earlier run
    capsys.readouterr()
    (tmp_path / ".f.safetensors.tmp").write_text("not fovea's")  # the old fixed temporary name
    before = snapshot(tmp_path)

    def torn(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(fovea.extract, "save_file", torn)
    err = refused(["extract", str(EXAMPLES), *TOWER, "--out", str(out)], capsys)
    assert str(out) in err and "Permission denied" in err
    assert snapshot(tmp_path) == before


def test_extract_replaces_only_its_own_features_file(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("my notes")
    err = refused(["extract", str(EXAMPLES / "shapes.png"), *TOWER, "--out", out], capsys)
    assert "not a features file fovea extract wrote" in err and out.read_text() == "my notes"
    mine = tmp_path / "f.safetensors"
    assert main(["extract", str(EXAMPLES / "shapes.png"), *TOWER, "--out", str(mine)]) == 0
    assert main(["extract", str(EXAMPLES), *TOWER, "--out", str(mine)]) == 0  # its own: replaced
    with safe_open(mine, "pt") as f:
        assert len(f.keys()) == 3
