"""Pins for the test environment: write a lock from an environment, or the oldest-versions pins.

Used by `.ci/refresh-lock` (see there and the README); standard library only, so it runs with
any Python 3.11+ before anything else is installed.

    python .ci/lock.py freeze OUT      the current environment, as a constraints file
    python .ci/lock.py oldest OUT      every direct requirement of fovea[dev] at its lower bound
    python .ci/lock.py open OUT        fovea[dev]'s requirements with each tested cap (<=X) opened to
                                       the next major release: where `refresh-lock newest` looks
    python .ci/lock.py raise LOCK      move each tested cap in pyproject.toml to LOCK's version
    python .ci/lock.py diff OLD NEW    the packages whose pinned version differs

A tested cap is an upper bound written `<=X` in pyproject.toml: the newest release of that package
the suite has passed on. Packages whose internals fovea relies on carry one (transformers and the
rest of the Hugging Face stack), so no user install resolves to a release no test has run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# {what}
# Written by `.ci/refresh-lock {mode}` on {day}; the suite passed on exactly these versions.
# Used as a pip constraints file (-c): it pins versions, it installs nothing by itself.
"""


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def freeze(out: Path, what: str, mode: str) -> None:
    """`pip freeze` of this interpreter, fovea itself left out, local labels (+cpu) dropped so the
    pin also admits the CUDA build of the same torch release on a GPU machine."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--all"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = []
    for line in listing.splitlines():
        if "==" not in line or _name(line) in {"setuptools", "wheel", "fovea"}:
            continue
        pins.append(line.split("+", 1)[0])
    pins.sort(key=_name)
    out.write_text(HEADER.format(what=what, mode=mode, day=date.today()) + "\n".join(pins) + "\n")


def _dev_requirements(project: dict) -> list[str]:
    """fovea[dev]'s direct requirements, the self-references (fovea[train,...]) expanded."""
    extras = project["optional-dependencies"]
    todo, seen, out = ["dev"], set(), list(project["dependencies"])
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for req in extras[extra]:
            inner = re.fullmatch(r"fovea\[(.+)\]", req)
            if inner:
                todo += [e for e in inner.group(1).split(",") if e not in seen]
            else:
                out.append(req)
    return out


def oldest(out: Path) -> None:
    """`name==low` for every direct requirement with a `>=low` bound."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for req in _dev_requirements(project):
        low = re.search(r">=\s*([\w.]+)", req)
        if low:
            pins[_name(req)] = f"{_name(req)}=={low.group(1)}"
    out.write_text("\n".join(sorted(pins.values())) + "\n")


_CAP = re.compile(r"<=\s*([\w.]+)")


def _next_major(version: str) -> str:
    return str(int(version.split(".")[0]) + 1)


def open_caps(out: Path) -> None:
    """fovea[dev]'s direct requirements, each `<=X` cap widened to `<next major of X`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [_CAP.sub(lambda m: "<" + _next_major(m.group(1)), req) for req in _dev_requirements(project)]
    out.write_text("\n".join(lines) + "\n")


def raise_caps(lock: Path) -> None:
    """Rewrite each tested cap of pyproject.toml to the version `lock` pins; print those that moved."""
    pins, path = _pins(lock), ROOT / "pyproject.toml"

    def moved(match: re.Match) -> str:
        requirement, cap = match.group(1), match.group(2)
        new = pins.get(_name(requirement), cap)
        if new != cap:
            print(f"  {_name(requirement)}: <={cap} -> <={new}")
        return match.group(0).replace(f"<={cap}", f"<={new}")

    text = re.sub(r'"([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?[^"]*?)<=\s*([\w.]+)', moved, path.read_text())
    path.write_text(text)


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pins[_name(line)] = line.split("==", 1)[1].strip()
    return pins


def diff(old: Path, new: Path) -> None:
    a, b = _pins(old), _pins(new)
    for name in sorted(set(a) | set(b)):
        if a.get(name) != b.get(name):
            print(f"  {name}: {a.get(name, '-')} -> {b.get(name, '-')}")


if __name__ == "__main__":
    command, *paths = sys.argv[1:]
    if command == "freeze":
        freeze(Path(paths[0]), paths[1], paths[2])
    elif command == "oldest":
        oldest(Path(paths[0]))
    elif command == "open":
        open_caps(Path(paths[0]))
    elif command == "raise":
        raise_caps(Path(paths[0]))
    elif command == "diff":
        diff(Path(paths[0]), Path(paths[1]))
    else:
        sys.exit(f"unknown command {command!r}: freeze, oldest, open, raise or diff")
