"""`fovea demo rice`: RICE end to end, offline, on a CPU, in minutes.

1. Scenes (rice_scenes.py): 64 px images with 2-3 objects (12 kinds) and 1-2 written words (4),
   each region in the manifest as a box, a COCO polygon or a COCO RLE mask; a pretraining set and
   a probe set (train / val).
2. Labels, through the real steps. Image level: an oracle teacher (what the scene holds, standing
   in for CLIP, as `fovea demo pretrain`'s) -> `cluster` -> `assign` (L labels, MLCD). Regions:
   `fovea pretrain regions` lays out every region and tokenizes every word (a tokenizer built
   offline), the region oracle (the region's kind, standing in for CLIP on the region) gives the
   object rows' vectors, then `cluster` and `assign --labels 1`.
3. Per seed, the same tiny ViT (the RICE-L-560 preset's MLCD architecture, shrunk) trained with
   the same steps and batch two ways: image-level MLCD only, and RICE (image + object-region +
   OCR-region losses through region layers).
4. The region probe (`region_probe.py`) of each exported tower and of the untrained ones: the
   kind of each held-out object region and the word of each word region, from ROI-pooled patch
   tokens, by a linear probe. Reported as it falls, every seed.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import from_dict
from .demo import check_inputs, prepared, write_results, write_scene_teacher
from .recipe import PretrainRecipe
from .rice_scenes import WORDS, make_region_scenes, oracle_image_features, oracle_region_features
from .scenes import KINDS

logger = logging.getLogger(__name__)

TOWER_PRESET = "rice-vit-l14-560-tiny"
TOWER = {"image_size": 64, "patch_size": 8, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 3, "num_attention_heads": 4}  # fmt: skip
IMAGE = {"size": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash"}
METHODS = {"MLCD, image-level only": False, "RICE, image + region losses": True}
SPLITS = ("pretrain", "probe-train", "probe-val")


@dataclass
class RiceDemo:
    out: Path
    accuracy: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Encoder -> region kind (object, ocr) -> linear-probe accuracy (%) per seed."""
    towers: dict[str, list[Path]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def run_rice_demo(
    out_dir: str | Path = "runs/demo-rice",
    *,
    images: int = 1500,
    probe_images: tuple[int, int] = (400, 200),
    centres: int = 48,
    labels: int = 4,
    region_centres: int = 24,
    steps: int = 150,
    seeds: tuple[int, ...] = (0, 1, 2),
    progress: bool = True,
) -> RiceDemo:
    from transformers.utils import logging as hf_logging

    check_inputs(images, centres)
    settings = {"images": images, "probe_images": list(probe_images), "centres": centres, "labels": labels,
                "region_centres": region_centres, "steps": steps, "seeds": list(seeds)}  # fmt: skip
    hf_logging.disable_progress_bar()
    try:
        out = Path(out_dir)
        _prepare(out, settings, progress)
        result = RiceDemo(out, settings=settings)
        result.accuracy["untrained encoder (floor)"] = _probe_all(out, [_untrained(out, s) for s in seeds])
        for method, regions in METHODS.items():
            towers = [_train(out, regions, seed, steps, progress) for seed in seeds]
            result.towers[method] = towers
            result.accuracy[method] = _probe_all(out, towers)
    finally:
        hf_logging.enable_progress_bar()
    write_results(out, settings, result.accuracy)
    return result


def _prepare(out: Path, settings: dict, progress: bool) -> None:
    """Scenes, tokenizer, image and region labels; redone when the settings changed."""
    from .steps import assign_labels, cluster_features

    if prepared(out, settings, DEMO_FILES):
        return
    counts = (settings["images"], *settings["probe_images"])
    for offset, (name, count) in enumerate(zip(SPLITS, counts)):
        make_region_scenes(out / "images" / name, count, seed=1000 * offset)
    _tokenizer(out)
    _image_teacher(out)
    cluster_features(out / "teacher", settings["centres"], out / "centres", restarts=2)
    assign_labels(out / "teacher", out / "centres", settings["labels"], out / "labels")
    _region_teacher(out, progress)
    cluster_features(out / "regions", settings["region_centres"], out / "region-centres", restarts=2)
    assign_labels(out / "regions", out / "region-centres", 1, out / "region-labels")
    (out / "prepared.json").write_text(json.dumps(settings))  # last: the data is whole


DEMO_FILES = ("images", "tokenizer", "teacher", "centres", "labels", "regions", "region-centres",
              "region-labels", "runs", "untrained", "probes", "prepared.json", "results.json")  # fmt: skip


def _tokenizer(out: Path) -> None:
    from ..tiny_tokenizers import tiny_tokenizer

    tiny_tokenizer(corpus=[" ".join(WORDS)]).save_pretrained(out / "tokenizer")


def _image_teacher(out: Path) -> None:
    folder = out / "images" / "pretrain"
    scenes = json.loads((folder / "scenes.json").read_text())
    write_scene_teacher(out / "teacher", folder, scenes, oracle_image_features(scenes),
                        "oracle: the objects and words drawn, 32-d")  # fmt: skip


def _region_teacher(out: Path, progress: bool) -> None:
    """The regions laid out and the words tokenized by `fovea pretrain regions` (any teacher: its
    vectors are then replaced by the region oracle's, the region's kind plus noise)."""
    from .features import compute_features
    from .region_features import RegionRows, region_rows, replace_vectors
    from .teacher import TeacherSpec

    folder = out / "images" / "pretrain"
    rows = RegionRows(folder / "regions.jsonl", min_edge=8, tokenizer=str(out / "tokenizer"))
    compute_features(TeacherSpec(TOWER_PRESET, pretrained=False), [folder], out / "regions", rows=rows,
                     device="cpu", progress=progress)  # fmt: skip
    kinds = [KINDS.index(item["region"]["label"]) for item in region_rows(out / "regions")]
    replace_vectors(out / "regions", oracle_region_features(kinds), teacher="oracle: the region's kind, 32-d")


def _recipe(out: Path, regions: bool, seed: int, steps: int, progress: bool) -> PretrainRecipe:
    slug = ("rice" if regions else "mlcd") + f"-seed{seed}"
    fields = {
        "encoder": {"tower": TOWER_PRESET, "tower_config": TOWER, "embedding_dim": 64, "image": IMAGE},
        "data": {"features": str(out / "teacher"), "labels": str(out / "labels")},
        "loss": {"sample_rate": 0.5},
        "optim": {"lr": 3e-3, "weight_decay": 0.05, "batch_size": 64, "max_steps": steps, "warmup_ratio": 0.1},
        "run": {"out_dir": str(out / "runs" / slug), "seed": seed, "progress": progress, "log_every": 25,
                "save_every": steps, "report_to": []},
    }  # fmt: skip
    if regions:
        fields["regions"] = {"features": str(out / "regions"), "labels": str(out / "region-labels"),
                             "object_loss": {"sample_rate": 0.5}, "ocr_loss": {"sample_rate": 0.5}}  # fmt: skip
    return from_dict(PretrainRecipe, fields)


def _train(out: Path, regions: bool, seed: int, steps: int, progress: bool) -> Path:
    from .train import train_encoder

    return train_encoder(_recipe(out, regions, seed, steps, progress))


def _untrained(out: Path, seed: int) -> Path:
    from ..imaging.processor import ImageConfig
    from ..towers.presets import build_tower
    from .encoder import Encoder, export_tower

    folder = out / "untrained" / f"seed{seed}"
    if not (folder / "config.json").is_file():
        torch.manual_seed(seed)
        tower, _ = build_tower(TOWER_PRESET, overrides=TOWER)
        export_tower(Encoder(tower, 64), ImageConfig(**IMAGE), folder)
    return folder


def _probe_all(out: Path, towers: list[Path]) -> dict[str, list[float]]:
    """Each tower's region probe on the demo's probe scenes: kind -> accuracy per tower."""
    from .region_probe import region_probe
    from .teacher import TeacherSpec

    scores: dict[str, list[float]] = {"object": [], "ocr": []}
    images = [out / "images" / name for name in SPLITS[1:]]
    manifests = [folder / "regions.jsonl" for folder in images]
    for tower in towers:
        where = out / "probes" / f"{tower.parent.name}-{tower.name}"
        result = region_probe(TeacherSpec(str(tower)), images, *manifests, where, device="cpu")
        for kind in scores:
            scores[kind].append(result["kinds"][kind]["linear"])
    return scores


def report(result: RiceDemo) -> str:
    """The table `fovea demo rice` prints: mean ± sd over seeds, and each seed."""
    lines = [
        "| encoder | object regions: kind, % | word regions: which word, % | per seed (object / word) |",
        "|---|---|---|---|",
    ]
    for name, kinds in result.accuracy.items():
        cells = []
        for kind in ("object", "ocr"):
            scores = kinds[kind]
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            cells.append(f"{statistics.mean(scores):.1f} ± {spread:.1f}")
        each = ", ".join(f"{o:.1f} / {w:.1f}" for o, w in zip(kinds["object"], kinds["ocr"]))
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {each} |")
    return "\n".join(lines)
