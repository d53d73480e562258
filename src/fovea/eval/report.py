"""Reports: several runs side by side as Markdown, and the radar chart of headline scores.

``fovea eval report RUN...`` reads each run's ``results.json``. The table has one row per task
(headline score as a percentage, the protocol named once per task) and then every metric; the
radar chart puts one axis per task, 0–100, one polygon per run (matplotlib, written as PNG).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import FoveaError


def load_results(run: str | Path) -> dict:
    path = Path(run)
    path = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise FoveaError(f"{path}: no results (is this a `fovea eval` run directory?)") from None
    except json.JSONDecodeError as err:
        raise FoveaError(f"{path}: not valid JSON ({err.msg})") from None
    results.setdefault("model", "")
    results["name"] = results["model"] or path.parent.name
    return results


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) <= 1 else f"{value:.2f}"
    return str(value)


def markdown(runs: list[dict]) -> str:
    names = [r.get("name") or r.get("model") or f"run {i + 1}" for i, r in enumerate(runs)]
    tasks = list(dict.fromkeys(t for r in runs for t in r["tasks"]))
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(runs)]
    for task in tasks:
        cells = []
        for run in runs:
            res = run["tasks"].get(task)
            value = res["headline_percent"] if res else None
            cells.append("–" if value is None else f"{value:.2f}")
        first = next(r["tasks"][task] for r in runs if task in r["tasks"])
        lines.append(f"| {task} ({first['headline']}, %) | " + " | ".join(cells) + " |")
    lines.append("")
    for task in tasks:
        first = next(r["tasks"][task] for r in runs if task in r["tasks"])
        lines.append(f"### {task}")
        if first.get("protocol"):
            lines.append(f"protocol: {first['protocol']}\n")
        metrics = list(dict.fromkeys(m for r in runs for m in r["tasks"].get(task, {}).get("metrics", {})))
        lines.append("| metric | " + " | ".join(names) + " |")
        lines.append("|---|" + "---|" * len(runs))
        for key in ("samples", "errors"):
            lines.append(
                f"| {key} | " + " | ".join(_fmt(r["tasks"].get(task, {}).get(key)) for r in runs) + " |"
            )
        for metric in metrics:
            cells = [_fmt(r["tasks"].get(task, {}).get("metrics", {}).get(metric)) for r in runs]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        notes = [n for r in runs for n in r["tasks"].get(task, {}).get("notes", [])]
        lines.extend(f"\nnote: {n}" for n in dict.fromkeys(notes))
        lines.append("")
    return "\n".join(lines)


def radar(runs: list[dict], path: str | Path, title: str = "") -> Path:
    """One axis per task (headline score, 0–100), one polygon per run; PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for r in runs for t in r["tasks"]))
    if len(tasks) < 3:
        raise FoveaError(f"a radar chart needs at least 3 tasks; these runs have {len(tasks)}: {tasks}")
    angles = [2 * math.pi * i / len(tasks) for i in range(len(tasks))]
    fig, ax = plt.subplots(figsize=(6.5, 6.5), subplot_kw={"projection": "polar"})
    for run in runs:
        values = [(run["tasks"].get(t) or {}).get("headline_percent") or 0.0 for t in tasks]
        ax.plot(angles + angles[:1], values + values[:1], linewidth=1.8, label=run["name"])
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.12)
    ax.set_xticks(angles)
    ax.set_xticklabels(tasks, fontsize=9)
    ax.set_ylim(0, 100)
    ax.set_yticks([20, 40, 60, 80, 100])
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12), fontsize=8)
    if title:
        ax.set_title(title, pad=24)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out
