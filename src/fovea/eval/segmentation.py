"""Referring segmentation tasks (RefCOCO, RefCOCO+, RefCOCOg): masks predicted, cIoU and gIoU.

Rows are the COCO-format referring data lmms-lab publishes (``lmms-lab/RefCOCO`` and its
siblings): an image, the referring sentences of one object (``answer``, a list) and the object's
COCO polygons (``segmentation``). As LISA and MLCD-Seg evaluate, every sentence is asked on its
own, and a row's masks are scored together (its IoU is their mean for gIoU; their pixels count in
cIoU's sums). The question is the task's ``prompt`` with ``{sentence}`` (MLCD-Seg's README asks
"Could you provide a segmentation mask for the ... in this image?"). Two protocols, the task's
``options.mode``, recorded in run.json:

* ``teacher_forced`` (MLCD-Seg's RefCOCO script): the answer ``options.answer`` ("Sure, [SEG].")
  is given, and one forward reads its [SEG] hidden state; nothing is generated;
* ``generate``: the model answers, then segments (`seg.model.segment` with ``force``: an answer
  without [SEG] gets one, as the original's ``force_seg``).

A prediction is the mask logits above 0; the target is the polygons filled at the image's size.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..imaging.masks import polygon_mask
from ..seg.head import sam_inputs
from ..seg.metrics import intersection_union, mask_iou
from ..seg.model import seg_forward, segment

MODES = ("teacher_forced", "generate")


def sentences(doc: dict) -> list[str]:
    value = doc.get("answer")
    found = [value] if isinstance(value, str) else list(value or [])
    found = [s.strip() for s in found if isinstance(s, str) and s.strip()]
    if not found:
        raise ValueError("no referring sentence in 'answer'")
    return found


def target_mask(doc: dict, size: tuple[int, int]):
    """The row's COCO polygons (a flat list, or a list of them) filled at `size` (height, width)."""
    polygons = doc.get("segmentation")
    if not polygons:
        raise ValueError("no 'segmentation' polygons")
    if isinstance(polygons[0], (int, float)):
        polygons = [polygons]
    return polygon_mask(polygons, [size[0], size[1]])


@torch.inference_mode()
def predict(model, spec, samples: list, images: list[list], options: dict) -> list[dict]:
    """Per sample: {"answers": [...], "pairs": [[I, U] per sentence]}."""
    if model.config.seg is None:
        raise ConfigError(f"task {spec.name}: this model does not segment (it has no [SEG] token and SAM)")
    mode = spec.options.get("mode", "teacher_forced")
    if mode not in MODES:
        raise ConfigError(f"task {spec.name}: options.mode must be one of {MODES}, got {mode!r}")
    template = options.get("template", "default")
    out = []
    for sample, picture in zip(samples, images):
        try:
            out.append(_predict_one(model, spec, sample.doc, picture[0], mode, template))
        except ValueError as err:  # a row that cannot be scored: named in the task's errors by `score`
            out.append({"error": str(err)})
    return out


def _predict_one(model, spec, doc: dict, image, mode: str, template) -> dict:
    target = target_mask(doc, (image.height, image.width))
    answers, pairs = [], []
    for sentence in sentences(doc):
        question = spec.prompt.format(sentence=sentence)
        if mode == "generate":
            result = segment(model, image, question, template=template, max_new_tokens=spec.max_new_tokens,
                             force=True)  # fmt: skip
            answer, predicted = result.text, result.masks[0]
        else:
            answer = spec.options.get("answer", "Sure, [SEG].")
            predicted = _teacher_forced(model, image, question, answer, template)
        answers.append(answer)
        pairs.append(list(intersection_union(predicted, target)))
    return {"answers": answers, "pairs": pairs}


def _teacher_forced(model, image, question: str, answer: str, template):
    inputs = model.prepare_chat(
        [{"role": "user", "content": question}], [image], template
    )  # image placed first
    ids = model.tokenizer(answer, add_special_tokens=False)["input_ids"]
    full_ids = torch.cat([inputs.input_ids, torch.tensor([ids], dtype=torch.long)], dim=1)
    full = inputs.replace(input_ids=full_ids, attention_mask=torch.ones_like(full_ids))
    masks = seg_forward(model, full, [sam_inputs(model.config.seg.processor(), [image])], logits=False).masks[
        0
    ][0]
    if not len(masks):
        raise ValueError(f"the answer {answer!r} has no [SEG] token")
    return (masks[0] > 0).cpu().numpy()


def score(spec, doc: dict, prediction: dict) -> dict[str, float]:
    if "error" in prediction:
        raise ValueError(prediction["error"])
    pairs = prediction["pairs"]
    return {"iou": sum(mask_iou(i, u) for i, u in pairs) / len(pairs),
            "intersection": float(sum(i for i, _ in pairs)), "union": float(sum(u for _, u in pairs))}  # fmt: skip


def aggregate(spec, records: list[dict]) -> dict[str, float]:
    """cIoU = ΣI / (ΣU + 1e-10) over every mask; gIoU = the mean of the rows' mean IoU."""
    total_i = sum(r["scores"]["intersection"] for r in records)
    total_u = sum(r["scores"]["union"] for r in records)
    giou = sum(r["scores"]["iou"] for r in records) / len(records) if records else 0.0
    return {"ciou": total_i / (total_u + 1e-10), "giou": giou, "masks": float(sum(len(r["prediction"]["pairs"])
                                                                                for r in records))}  # fmt: skip


def first_prompt(spec, row: dict) -> str:
    """The first sentence's question, as the run's record shows it."""
    return "<image>\n" + spec.prompt.format(sentence=sentences(row)[0])
