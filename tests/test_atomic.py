"""Atomic writes never reuse or leave a temporary file: a user's file of any name survives."""

from __future__ import annotations

import pytest

from fovea.atomic import write_atomic, write_text_atomic
from fovea.tiny import tiny_vlm


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old")

    def torn(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, torn)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["run.json"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_saving_a_checkpoint_leaves_a_user_file_with_the_old_temporary_name_alone(tmp_path):
    (tmp_path / ".config.json.tmp").write_text("mine")
    (tmp_path / ".model.safetensors.tmp").write_text("mine too")
    tiny_vlm().save_pretrained(tmp_path)
    assert (tmp_path / ".config.json.tmp").read_text() == "mine"
    assert (tmp_path / ".model.safetensors.tmp").read_text() == "mine too"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and "mine" not in p.read_text()]
