"""House rules kept by tests: module boundaries, file sizes, no printing in the library."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "fovea"

# DESIGN.md's layers, bottom first: a module may import its own layer and those below, never above.
LAYERS = [
    # resolution, files and errors every layer uses; offline tokenizers (no model code)
    ["fovea", "fovea.errors", "fovea.atomic", "fovea.registry", "fovea.config", "fovea.hub",
     "fovea.tensor_files", "fovea.tiny_tokenizers", "fovea.dtypes", "fovea.threads"],
    ["fovea.imaging"],
    ["fovea.towers"],
    ["fovea.connectors"],
    ["fovea.model", "fovea.seg"],
    ["fovea.checkpoints", "fovea.data"],
    ["fovea.train", "fovea.infer", "fovea.eval", "fovea.extract"],
    ["fovea.pretrain", "fovea.demo", "fovea.seg_demo", "fovea.tiny"],  # tiny models: tests, demos, benchmarks only
    ["fovea.cli"],
]  # fmt: skip


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best = max((p for row in LAYERS for p in row if module == p or module.startswith(p + ".")), key=len)
    return next(i for i, row in enumerate(LAYERS) if best in row)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """fovea modules `path` imports, at module level or inside functions (not under TYPE_CHECKING)."""
    tree, here = ast.parse(path.read_text()), _module(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
            continue
        base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
        target = ".".join(base + ([node.module] if node.module else []))
        found.update(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names)
    return {m for m in found if m in modules and m != here}


def _imports(path: Path) -> set[str]:
    """Every module name `path` imports (any package), as written."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.lstrip("."))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def _import_graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in SRC.rglob("*.py")}
    return {m: _runtime_imports(p, set(paths)) for m, p in paths.items()}


def test_no_import_runs_up_the_layers():
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, targets in _import_graph().items()
        for b in targets
        if _layer(b) > _layer(a)
    ]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_cycles():
    graph, cycles = _import_graph(), []
    for start in graph:  # depth-first from each module: a path back to it is a cycle
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in path and len(path) < 12:
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, "\n".join(sorted(set(cycles))[:10])


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
