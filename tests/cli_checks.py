"""Checks shared by the tests that drive the CLI with bad input."""

from __future__ import annotations

from fovea.cli import main


def snapshot(root) -> dict:
    """Every file under `root` (hidden ones too) -> its bytes: what must survive a refusal."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def refused(argv: list, capsys) -> str:
    """Run `fovea ARGV`; assert the one-line refusal (exit 2, no traceback) and return the line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err
