"""House rules kept by tests: module boundaries, file sizes, no printing in the library."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "fovea"
MODEL_SIDE = ["towers", "connectors", "model", "imaging"]
FORBIDDEN = {"train", "infer", "eval", "data"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.lstrip("."))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_model_side_never_imports_training_or_serving():
    for package in MODEL_SIDE:
        for path in (SRC / package).rglob("*.py"):
            bad = {
                m
                for m in _imports(path)
                if m.split(".")[0] in FORBIDDEN or m.startswith("fovea.") and m.split(".")[1] in FORBIDDEN
            }
            assert not bad, f"{path} imports {bad}"


def test_files_stay_readable():
    for path in SRC.rglob("*.py"):
        assert path.read_text().count("\n") <= 500, f"{path} is over 500 lines"


def test_only_the_cli_and_the_repl_print():
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).as_posix().startswith(("cli/", "infer/chat.py")):
            continue
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]
        assert not any(isinstance(c.func, ast.Name) and c.func.id == "print" for c in calls), path


def test_metrics_are_pure_python():
    """Scoring must not depend on torch (DESIGN: metrics are pure functions)."""
    imports = _imports(SRC / "eval" / "metrics.py")
    assert not {m for m in imports if m.split(".")[0] in ("torch", "numpy", "transformers")}
