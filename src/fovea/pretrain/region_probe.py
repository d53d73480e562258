"""The region probe: how well a frozen tower's patch tokens tell regions apart (RICE's question).

Any tower (a preset, hub id or directory: RICE, MLCD, CLIP, SigLIP ...) is scored the same way.
Each labelled region of a manifest (an object's ``label``; an OCR region's ``label``, else its
text) gets the mean of the tower's last-layer patch tokens it sees on the image's square view,
L2-normalised: ROI pooling with the visibility rule of RICE's region layers, written by the same
step as RICE's region features (`region_features.RegionRows`, ``pool="roi"``, OCR regions as rows
too). Objects and OCR regions are scored apart, each by a linear probe (`probe.linear_probe`:
logistic regression, C chosen on a held-out fifth) and by weighted k-NN (`probe.knn_accuracy`),
trained on the train manifest's regions and scored on the val manifest's. A region without a
label is refused, naming it; regions the manifests drop (small) or the view leaves out are
counted in each split's folder (manifest.json, the parts' ``skipped``).

Output, a folder OUT: ``train/`` and ``val/`` (region folders, resumable), ``region_probe.json``
and ``region_probe.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_text_atomic
from ..errors import ConfigError
from .features import compute_features, load_features
from .region_features import RegionRows, region_rows
from .teacher import TeacherSpec

KINDS = ("object", "ocr")


@dataclass
class RegionSplit:
    features: np.ndarray
    labels: list[str]
    kinds: list[str]


def region_split(
    tower: TeacherSpec,
    inputs: list,
    manifest: str | Path,
    out: Path,
    *,
    min_edge=0.0,
    device=None,
    progress=False,
) -> RegionSplit:
    """The ROI-pooled features of every region of `manifest` (in the images of `inputs`), with labels."""
    rows = RegionRows(manifest, pool="roi", min_edge=min_edge, ocr_rows=True)
    compute_features(tower, inputs, out, rows=rows, device=device, progress=progress)
    labels, kinds = [], []
    for item in region_rows(out):
        region = item["region"]
        label = region.get("label", region.get("text"))
        if not isinstance(label, str) or not label:
            raise ConfigError(
                f"{manifest}: image {item['image']}: a region has no 'label' (the probe's class)"
            )
        labels.append(label)
        kinds.append(item["kind"])
    return RegionSplit(load_features(out).array, labels, kinds)


def region_probe(
    tower: TeacherSpec,
    inputs: list,
    train: str | Path,
    val: str | Path,
    out: str | Path,
    *,
    min_edge: float = 0.0,
    ks: tuple[int, ...] = (10, 20),
    device: str | None = None,
    progress: bool = False,
) -> dict:
    """Per kind of region: its counts, linear-probe accuracy and k-NN top-1 (%); written to OUT."""
    from .probe import knn_accuracy, linear_probe

    out = Path(out)
    splits = {name: region_split(tower, inputs, manifest, out / name, min_edge=min_edge, device=device,
                                 progress=progress)
              for name, manifest in (("train", train), ("val", val))}  # fmt: skip
    result = {"tower": tower.tower, "weights": tower.settings()["weights"], "kinds": {}}
    for kind in KINDS:
        (train_x, train_y), (val_x, val_y) = (_of_kind(splits[n], kind) for n in ("train", "val"))
        if len(set(train_y)) < 2 or not val_y:
            continue
        classes = sorted(set(train_y))
        index = {c: i for i, c in enumerate(classes)}
        keep = [i for i, y in enumerate(val_y) if y in index]  # a class the probe never saw cannot be scored
        ty = np.array([index[y] for y in train_y])
        vy = np.array([index[val_y[i]] for i in keep])
        linear = linear_probe(train_x, ty, val_x[keep], vy)
        knn = knn_accuracy(train_x, ty, val_x[keep], vy, ks=ks)
        result["kinds"][kind] = {"train": len(ty), "val": len(vy), "unseen_val": len(val_y) - len(vy),
                                 "classes": len(classes), "linear": linear.accuracy,
                                 "knn": {str(k): v["top1"] for k, v in knn.items()}}  # fmt: skip
    if not result["kinds"]:
        raise ConfigError(f"{train}: needs regions of at least 2 labels of one kind to probe")
    write_text_atomic(out / "region_probe.json", json.dumps(result, indent=2))
    write_text_atomic(out / "region_probe.md", table(result) + "\n")
    return result


def _of_kind(split: RegionSplit, kind: str) -> tuple[np.ndarray, list[str]]:
    rows = [i for i, k in enumerate(split.kinds) if k == kind]
    return split.features[rows], [split.labels[i] for i in rows]


def table(result: dict) -> str:
    """The Markdown table of one region probe."""
    lines = ["| regions | train / val | classes | linear probe, % | k-NN top-1, % |", "|---|---|---|---|---|"]
    for kind, r in result["kinds"].items():
        knn = ", ".join(f"k={k}: {v:.1f}" for k, v in r["knn"].items())
        lines.append(f"| {kind} | {r['train']} / {r['val']} | {r['classes']} | {r['linear']:.1f} | {knn} |")
    return "\n".join(lines)
