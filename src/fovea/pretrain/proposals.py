"""Region proposals for RICE's manifests from real models: SAM's masks and PP-OCR's words.

RICE segments LAION and COYO with SAM and reads their text with PaddleOCR (confidence > 0.7,
§3.1). `fovea pretrain propose` does both, and writes a region manifest (`region_manifest`):

* **objects: SAM** (transformers' `SamModel`, any checkpoint; RICE used SAM's own masks), run as
  SAM's automatic mask generator runs: a grid of `points_per_side`² single-point prompts, three
  masks each, kept when the predicted IoU is at least 0.88 and the stability score (the IoU of the
  mask cut at logit +1 and at -1) at least 0.95, then duplicates removed by box NMS at IoU 0.7 in
  order of predicted IoU; SAM's defaults. transformers' mask-generation pipeline does the same but
  needs torchvision for its NMS, which fovea's CPU install lacks, so the steps are written here;
  one difference: stability is scored on the decoder's 256 x 256 logits, before upscaling, so only
  kept masks are brought to the image's size (memory). Masks are written as COCO RLE strings.
* **text: rapidocr** (PaddleOCR's PP-OCR detection and recognition models as ONNX, shipped inside
  its wheel, so it runs offline; ``pip install 'fovea[ocr]'``): each word line kept at confidence
  >= 0.7, as an OCR region with its axis-aligned box.

Regions with an edge under `min_edge` (RICE's 128 px) are not written, and counted. Output, a
folder OUT: ``parts/part-N.jsonl`` (one manifest line per image with a region) and
``parts/part-N.json`` (its chunk, images, skipped and small counts: written last, so a part exists
whole or not at all), then ``regions.jsonl``, every part in order, and ``proposals.json``. Under
torchrun process r does chunks r, r + world, ...; a rerun finishes what a killed run left.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_text_atomic
from ..errors import ConfigError, ImageError
from ..imaging.masks import rle_encode
from .data import Chunk, plan
from .features import process_rank, wait_for_parts
from .region_manifest import MIN_EDGE

logger = logging.getLogger(__name__)

FORMAT = "fovea-proposals"


@dataclass(frozen=True)
class SamSettings:
    model: str
    """A SAM checkpoint directory or hub id (transformers' SamModel layout)."""
    points_per_side: int = 32
    points_per_batch: int = 64
    iou_threshold: float = 0.88
    stability_threshold: float = 0.95
    stability_offset: float = 1.0
    nms_threshold: float = 0.7


class SamProposer:
    """image -> [(mask (H, W) bool, predicted IoU)], SAM's automatic mask generation."""

    def __init__(self, settings: SamSettings, device: str = "cpu"):
        from transformers import SamImageProcessorPil, SamModel

        self.settings = settings
        try:
            self.model = SamModel.from_pretrained(settings.model).to(device).eval()
            self.processor = SamImageProcessorPil.from_pretrained(settings.model)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"SAM {settings.model}: cannot be loaded ({str(err).splitlines()[0]})"
            ) from None
        self.device = device

    @torch.inference_mode()
    def __call__(self, image) -> list[tuple[np.ndarray, float]]:
        s = self.settings
        inputs = self.processor(images=image, return_tensors="pt")
        original, reshaped = inputs["original_sizes"][0].tolist(), inputs["reshaped_input_sizes"][0].tolist()
        embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device))
        points = point_grid(s.points_per_side, *original)
        points = points * torch.tensor(
            [reshaped[1] / original[1], reshaped[0] / original[0]]
        )  # as SAM scales
        logits, scores = [], []
        for batch in points.split(s.points_per_batch):
            out = self.model(image_embeddings=embeddings, input_points=batch[None, :, None].to(self.device),
                             input_labels=torch.ones(1, len(batch), 1, dtype=torch.long, device=self.device),
                             multimask_output=True)  # fmt: skip
            masks, iou = out.pred_masks[0].flatten(0, 1), out.iou_scores[0].flatten()  # (3P, h, w), (3P,)
            keep = (iou >= s.iou_threshold) & (stability(masks, s.stability_offset) >= s.stability_threshold)
            logits.append(masks[keep].cpu())
            scores.append(iou[keep].cpu())
        logits, scores = torch.cat(logits), torch.cat(scores)
        if not len(logits):
            return []
        full = self.processor.post_process_masks([logits[:, None]], [original], [reshaped])[0][
            :, 0
        ]  # (k, H, W)
        present = full.flatten(1).any(1)
        full, scores = full[present], scores[present]
        kept = box_nms(mask_boxes(full), scores, s.nms_threshold)
        return [(full[i].numpy(), float(scores[i])) for i in kept.tolist()]


def point_grid(per_side: int, height: int, width: int) -> torch.Tensor:
    """(per_side², 2) (x, y) pixel points at the centres of a per_side x per_side grid of cells."""
    ys = (torch.arange(per_side, dtype=torch.float32) + 0.5) * height / per_side
    xs = (torch.arange(per_side, dtype=torch.float32) + 0.5) * width / per_side
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)


def stability(logits: torch.Tensor, offset: float, threshold: float = 0.0) -> torch.Tensor:
    """(k, h, w) mask logits -> (k,) the IoU of the mask cut at threshold + offset and at threshold - offset."""
    inner = (logits > threshold + offset).flatten(1).sum(1)
    outer = (logits > threshold - offset).flatten(1).sum(1)
    return torch.where(outer > 0, inner / outer.clamp(min=1), torch.zeros_like(inner, dtype=torch.float32))


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(k, H, W) bool, each with a pixel set -> (k, 4) float boxes x0, y0, x1, y1 (x1, y1 exclusive)."""
    rows, cols = masks.any(2), masks.any(1)  # (k, H), (k, W)
    first = lambda m: m.float().argmax(1)  # noqa: E731
    last = lambda m: m.shape[1] - m.flip(1).float().argmax(1)  # noqa: E731
    return torch.stack([first(cols), first(rows), last(cols), last(rows)], 1).float()


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: indices kept, highest score first; a box is dropped when
    its IoU with a kept one exceeds `threshold`."""
    order = scores.argsort(descending=True)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept: list[int] = []
    for i in order.tolist():
        if kept:
            other = boxes[kept]
            wide = (torch.minimum(other[:, 2], boxes[i, 2]) - torch.maximum(other[:, 0], boxes[i, 0])).clamp(
                min=0
            )
            high = (torch.minimum(other[:, 3], boxes[i, 3]) - torch.maximum(other[:, 1], boxes[i, 1])).clamp(
                min=0
            )
            overlap = wide * high
            if bool((overlap / (area[kept] + area[i] - overlap)).max() > threshold):
                continue
        kept.append(i)
    return torch.tensor(kept, dtype=torch.long)


class OcrProposer:
    """image -> [{"box", "text", "score"}] of the words PP-OCR reads with at least `min_score`."""

    def __init__(self, min_score: float = 0.7):
        try:
            from rapidocr import RapidOCR
        except ImportError:
            raise ConfigError("OCR proposals need rapidocr: pip install 'fovea[ocr]'") from None
        # its default logs every model file at INFO; the models are the ones in its wheel (offline)
        self.engine, self.min_score = RapidOCR(params={"Global.log_level": "warning"}), min_score

    def __call__(self, image) -> list[dict]:
        result = self.engine(np.asarray(image.convert("RGB"))[:, :, ::-1].copy())  # OpenCV's BGR
        words = []
        for quad, text, score in zip(result.boxes if result.boxes is not None else [], result.txts or (),
                                     result.scores or ()):  # fmt: skip
            if score >= self.min_score and text.strip():
                quad = np.asarray(quad, dtype=np.float64)
                box = [
                    float(quad[:, 0].min()),
                    float(quad[:, 1].min()),
                    float(quad[:, 0].max()),
                    float(quad[:, 1].max()),
                ]
                words.append(
                    {"box": [round(v, 1) for v in box], "text": text.strip(), "score": round(float(score), 4)}
                )
        return words


# -- the run --------------------------------------------------------------------------------------


def propose(
    inputs: list,
    out: str | Path,
    *,
    sam: SamSettings | None = None,
    ocr: float | None = None,
    min_edge: float = MIN_EDGE,
    chunk_size: int = 4096,
    device: str | None = None,
    progress: bool = False,
    poll_seconds: float = 2.0,
) -> dict | None:
    """Write OUT (see the module docstring) from SAM (`sam`) and/or OCR (`ocr`: the minimum
    confidence); the summary on process 0, else None."""
    from tqdm.auto import tqdm

    if sam is None and ocr is None:
        raise ConfigError("give SAM (--sam MODEL), OCR (--ocr), or both")
    out, (rank, world) = Path(out), process_rank()
    chunks = plan(inputs, chunk_size)
    settings = {"format": FORMAT, "sam": asdict(sam) if sam else None, "ocr_confidence": ocr,
                "min_edge": min_edge, "inputs": [os.path.abspath(str(i)) for i in inputs], "chunk_size": chunk_size}  # fmt: skip
    _check_output(out, settings)
    todo = [c for c in range(rank, len(chunks), world) if not _done(out, c)]
    proposers = _proposers(sam, ocr, device) if todo else {}
    with tqdm(total=len(todo), desc="proposals", unit="part", disable=not (progress and rank == 0)) as bar:
        for c in todo:
            _write_part(out, c, chunks[c], proposers, min_edge)
            bar.update(1)
    wait_for_parts(out, len(chunks), rank, poll_seconds, progress, done=_done)
    return _finish(out, len(chunks)) if rank == 0 else None


def _proposers(sam: SamSettings | None, ocr: float | None, device: str | None) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    proposers = {}
    if sam is not None:
        proposers["objects"] = SamProposer(sam, device)
    if ocr is not None:
        proposers["ocr"] = OcrProposer(ocr)
    return proposers


def _check_output(out: Path, settings: dict) -> None:
    run = out / "run.json"
    if run.is_file():
        before = json.loads(run.read_text())
        if before.get("format") != FORMAT:
            raise ConfigError(
                f"{out}: exists and was not written by fovea pretrain propose; choose another --out"
            )
        if before != settings:
            changed = next(k for k in settings if before.get(k) != settings[k])
            raise ConfigError(f"{out} was begun with other settings ({changed}): rerun with the same ones to "
                              "resume, or choose another --out")  # fmt: skip
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"{out}: exists and was not written by fovea pretrain propose; choose another --out"
        )
    (out / "parts").mkdir(parents=True, exist_ok=True)
    write_text_atomic(run, json.dumps(settings, indent=2))


def _part(out: Path, c: int) -> tuple[Path, Path]:
    stem = out / "parts" / f"part-{c:06d}"
    return stem.with_suffix(".jsonl"), stem.with_suffix(".json")


def _done(out: Path, c: int) -> bool:
    return all(p.is_file() for p in _part(out, c))


def _write_part(out: Path, c: int, chunk: Chunk, proposers: dict, min_edge: float) -> None:
    lines, skipped, small, regions = [], [], 0, 0
    for ref in chunk.refs():
        try:
            image = ref.load()
        except ImageError as err:
            logger.warning("skipped %s", err)
            skipped.append([ref.id, str(err).removeprefix(f"{ref.id}: ")])
            continue
        line = {"image": ref.id}
        if "objects" in proposers:
            masks = proposers["objects"](image)
            line["objects"] = [{"mask": rle_encode(mask), "score": round(score, 4)}
                               for mask, score in masks if _edge(mask) >= min_edge]  # fmt: skip
            small += len(masks) - len(line["objects"])
        if "ocr" in proposers:
            words = proposers["ocr"](image)
            line["ocr"] = [
                w for w in words if min(w["box"][2] - w["box"][0], w["box"][3] - w["box"][1]) >= min_edge
            ]
            small += len(words) - len(line["ocr"])
        found = len(line.get("objects", [])) + len(line.get("ocr", []))
        regions += found
        if found:
            lines.append(json.dumps(line))
    jsonl, meta = _part(out, c)
    write_text_atomic(jsonl, "".join(f"{line}\n" for line in lines))
    info = {"chunk": c, "source": chunk.source, "images": len(lines), "regions": regions, "small": small,
            "skipped": skipped}  # fmt: skip
    write_text_atomic(meta, json.dumps(info))  # last: its presence marks the part finished


def _edge(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    return float(min(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1))


def _finish(out: Path, count: int) -> dict:
    """regions.jsonl (every part in order) and proposals.json, the summary."""
    infos = [json.loads(_part(out, c)[1].read_text()) for c in range(count)]
    text = "".join(_part(out, c)[0].read_text() for c in range(count))
    write_text_atomic(out / "regions.jsonl", text)
    summary = {"manifest": str(out / "regions.jsonl"), "images": sum(i["images"] for i in infos),
               "regions": sum(i["regions"] for i in infos), "small": sum(i["small"] for i in infos),
               "skipped": [s for i in infos for s in i["skipped"]]}  # fmt: skip
    write_text_atomic(out / "proposals.json", json.dumps(summary, indent=2))
    return summary
