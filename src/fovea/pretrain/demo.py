"""`fovea demo pretrain`: cluster-discrimination pretraining end to end, offline, on a CPU, in minutes.

1. Scenes (scenes.py): 32 px images with 2-3 objects each, 12 kinds; a pretraining set and a
   probe set (train / val), all generated.
2. The teacher. Offline there is no CLIP to download, so the teacher is an *oracle*: a fixed random
   vector per object kind summed over the objects of the scene, plus noise (`oracle_features`).
   It plays CLIP's part, a model that knows what is in the image, and it is written as a FEATS
   folder like `fovea pretrain features` writes.
3. `cluster` into K centres; `assign` the L most similar (multi-label) and the nearest (single).
4. Train a tiny ViT from scratch, per seed, three ways: MLCD (L labels, MLCD's loss), MLCD's loss
   with one label, and UNICOM's single-label ArcFace margin softmax; PartialFC at r = 0.5.
5. Probe each frozen encoder (its pooled output) on per-object attributes it never saw as labels:
   for each of the 12 kinds, is one in the scene, by a linear probe (mean accuracy over kinds);
   always answering "absent", the untrained encoder and the oracle teacher are the floors and the
   ceiling.

The question it answers: on multi-object images, does MLCD's multi-label assignment give a better
encoder than one label per image? The numbers are reported as they fall, with every seed.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import from_dict
from ..errors import ConfigError
from .recipe import PretrainRecipe
from .scenes import KINDS, kind_targets, make_scenes, oracle_features
from .steps import assign_labels, cluster_features

logger = logging.getLogger(__name__)

TOWER = {"image_size": 32, "patch_size": 8, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 3, "num_attention_heads": 4}  # fmt: skip
METHODS = {
    "MLCD, multi-label": {"loss": {"type": "mlcd"}, "labels": "multi"},
    "MLCD loss, one label": {"loss": {"type": "mlcd"}, "labels": "single"},
    "UNICOM, ArcFace one label": {"loss": {"type": "margin", "m2": 0.3, "m3": 0.0}, "labels": "single"},
}


@dataclass
class PretrainDemo:
    out: Path
    accuracy: dict[str, list[float]] = field(default_factory=dict)
    """Encoder -> mean probe accuracy (%) over the object kinds, per seed."""
    settings: dict = field(default_factory=dict)


def run_pretrain_demo(
    out_dir: str | Path = "runs/demo-pretrain",
    *,
    images: int = 3000,
    probe_images: tuple[int, int] | None = None,
    centres: int = 64,
    labels: int = 4,
    steps: int = 300,
    seeds: tuple[int, ...] = (0, 1, 2),
    progress: bool = True,
) -> PretrainDemo:
    from transformers.utils import logging as hf_logging

    check_inputs(images, centres)
    probe_images = probe_images or (max(20, images // 3), max(10, images // 6))  # 3000 -> 1000 + 500
    hf_logging.disable_progress_bar()  # one "Loading weights" bar per encoder says nothing here
    try:
        return _run(Path(out_dir), images, probe_images, centres, labels, steps, seeds, progress)
    finally:
        hf_logging.enable_progress_bar()


def _run(out: Path, images, probe_images, centres, labels, steps, seeds, progress) -> PretrainDemo:
    settings = {"images": images, "probe_images": list(probe_images), "centres": centres, "labels": labels,
                "steps": steps, "seeds": list(seeds)}  # fmt: skip
    _prepare(out, settings, progress)
    result = PretrainDemo(out, settings=settings)
    probe_sets = _probe_sets(out)
    absent = 100.0 * (1 - probe_sets["probe-val"][1].mean())
    result.accuracy['always "absent" (floor)'] = [absent] * len(seeds)
    result.accuracy["untrained encoder (floor)"] = [
        _probe_tower(_untrained(seed), probe_sets) for seed in seeds
    ]
    for method, spec in METHODS.items():
        scores = []
        for seed in seeds:
            tower = _train(out, method, spec, seed, steps, progress)
            scores.append(_probe_tower(tower, probe_sets))
        result.accuracy[method] = scores
    result.accuracy["oracle teacher (ceiling)"] = [_probe_oracle(out)] * len(seeds)
    write_results(out, settings, result.accuracy)
    return result


def write_results(out: Path, settings: dict, accuracy: dict) -> None:
    """A demo's results.json: its settings and every encoder's scores."""
    (out / "results.json").write_text(json.dumps({"settings": settings, "accuracy": accuracy}, indent=2))


def prepared(out: Path, settings: dict, names: tuple[str, ...] | None = None) -> bool:
    """True when `out` holds a demo's data made with `settings`; otherwise what an earlier run
    wrote there (only the demo's own `names`) is cleared for a fresh start."""
    marker = out / "prepared.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return True
    clear(out, names or DEMO_FILES)
    return False


def _prepare(out: Path, settings: dict, progress: bool) -> None:
    """Scenes, teacher features, centres and labels; redone when the settings changed."""
    if prepared(out, settings):
        return
    sizes = {"pretrain": settings["images"], "probe-train": settings["probe_images"][0],
             "probe-val": settings["probe_images"][1]}  # fmt: skip
    for offset, (name, count) in enumerate(sizes.items()):
        make_scenes(out / "images" / name, count, seed=1000 * offset)
    _write_teacher(out)
    cluster_features(out / "teacher", settings["centres"], out / "centres", restarts=2)
    assign_labels(out / "teacher", out / "centres", settings["labels"], out / "labels-multi")
    assign_labels(out / "teacher", out / "centres", 1, out / "labels-single")
    (out / "prepared.json").write_text(json.dumps(settings))  # last: the data is whole


def check_inputs(images: int, centres: int) -> None:
    """What a pretraining demo needs, checked before any work: enough images for its k-means, and
    the [pretrain] extra (faiss for k-means, scikit-learn for the probes)."""
    if images < centres:
        raise ConfigError(f"the demo clusters its images into {centres} centres: give at least {centres} "
                          f"images (--images), got {images}")  # fmt: skip
    import faiss  # noqa: F401
    import sklearn  # noqa: F401


DEMO_FILES = ("images", "teacher", "centres", "labels-multi", "labels-single", "runs", "prepared.json")


def clear(out: Path, names: tuple[str, ...] = DEMO_FILES) -> None:
    """Remove what an earlier demo run wrote here (only the demo's own folders and files)."""
    import shutil

    for name in names:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _write_teacher(out: Path) -> None:
    folder = out / "images" / "pretrain"
    scenes = json.loads((folder / "scenes.json").read_text())
    write_scene_teacher(
        out / "teacher", folder, scenes, oracle_features(scenes), "oracle: bag of the objects drawn, 32-d"
    )


def write_scene_teacher(out: Path, folder: Path, scenes: list[dict], array: np.ndarray, teacher: str) -> None:
    """A FEATS folder of a demo's oracle features, one row per scene of `folder` (scenes.json order)."""
    from .data import scan
    from .features import write_features

    by_file = {Path(ref.path).name: ref for chunk in scan([folder]) for ref in chunk}
    write_features(out, [by_file[s["file"]] for s in scenes], array, teacher=teacher)


def _train(out: Path, method: str, spec: dict, seed: int, steps: int, progress: bool) -> Path:
    from .train import train_encoder

    slug = method.split(",")[0].split()[0].lower() + "-" + spec["labels"]
    fields = {
        "encoder": {"tower": "clip-vit-l14-336-tiny", "tower_config": TOWER, "embedding_dim": 64,
                    "image": {"mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash"}},
        "data": {"features": str(out / "teacher"), "labels": str(out / f"labels-{spec['labels']}")},
        "loss": {"sample_rate": 0.5, **spec["loss"]},
        "optim": {"lr": 3e-3, "weight_decay": 0.05, "batch_size": 128, "max_steps": steps, "warmup_ratio": 0.1},
        "run": {"out_dir": str(out / "runs" / f"{slug}-seed{seed}"), "seed": seed, "progress": progress,
                "log_every": 25, "save_every": steps, "report_to": []},
    }  # fmt: skip
    return train_encoder(from_dict(PretrainRecipe, fields))


def _untrained(seed: int):
    import torch

    from ..towers.presets import build_tower

    torch.manual_seed(seed)
    return build_tower("clip-vit-l14-336-tiny", overrides=TOWER)[0]


def _probe_sets(out: Path) -> dict:
    sets = {}
    for name in ("probe-train", "probe-val"):
        folder = out / "images" / name
        scenes = json.loads((folder / "scenes.json").read_text())
        sets[name] = ([folder / s["file"] for s in scenes], kind_targets(scenes), scenes)
    return sets


def _probe_tower(tower, sets: dict) -> float:
    """Mean over the object kinds of the linear-probe accuracy (%) of "is one in the scene"."""
    from ..imaging.processor import ImageConfig, ImageProcessor
    from ..towers.base import VisionTower
    from ..towers.presets import build_tower
    from .probe import pooled_features

    if not isinstance(tower, VisionTower):
        tower, _ = build_tower(str(tower), pretrained=True)
    tower.eval()
    processor = ImageProcessor(ImageConfig(size=32, mean=[0.5] * 3, std=[0.5] * 3, resize="squash"))
    feats = {}
    for name, (paths, _, _) in sets.items():
        x, kept, skipped = pooled_features(tower, processor, paths)
        if skipped:
            raise RuntimeError(f"the demo's own images failed to load: {skipped[0]}")
        feats[name] = x.numpy()
    return _kinds(feats["probe-train"], sets["probe-train"][1], feats["probe-val"], sets["probe-val"][1])


def _probe_oracle(out: Path) -> float:
    sets = _probe_sets(out)
    x = {name: oracle_features(scenes) for name, (_, _, scenes) in sets.items()}
    return _kinds(x["probe-train"], sets["probe-train"][1], x["probe-val"], sets["probe-val"][1])


def _kinds(train_x, train_y, val_x, val_y) -> float:
    from .probe import linear_probe

    scores = [linear_probe(train_x, train_y[:, k], val_x, val_y[:, k]).accuracy for k in range(len(KINDS))]
    return float(np.mean(scores))


def report(result: PretrainDemo) -> str:
    """The table `fovea demo pretrain` prints: mean and spread over seeds, and each seed."""
    lines = [
        "| encoder | object-kind probe accuracy, % (mean ± sd over seeds) | per seed |",
        "|---|---|---|",
    ]
    for method, scores in result.accuracy.items():
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        each = ", ".join(f"{s:.1f}" for s in scores)
        lines.append(f"| {method} | {statistics.mean(scores):.1f} ± {spread:.1f} | {each} |")
    return "\n".join(lines)
