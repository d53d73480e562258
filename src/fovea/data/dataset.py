"""The supervised dataset: records -> model-ready samples, lazily, bad records reported.

Each item is read, checked, its images loaded and cut, and its conversation tokenized only when
asked for, so any dataset streams. A bad record (missing or unreadable image, tag/image count
mismatch, empty conversation, nothing left after truncation, a line that is not JSON or not
UTF-8) does not raise: it comes back as a `Skipped` with its id and a one-line reason naming the
data file and the record; the collator passes those on and the training loop counts and logs
them. A run never dies hours in on one sample, and never drops one silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import ImageError
from ..imaging.io import load_image
from ..imaging.video import VideoError
from ..model.inputs import ModelInputs
from ..model.prompting import question_text
from ..model.templates import TEMPLATES
from ..model.visuals import arrange_messages
from .labels import IGNORE, encode
from .packing import pack as pack_samples
from .packing import worth_packing
from .records import IMAGE_TAG, BadRecord, Sample, normalise, record_id, skip_reason
from .sources import RecordSource


def visual_items(sample: Sample, model) -> tuple[list[dict], list]:
    """(the sample's messages with each video tag made an image tag, its images and videos in tag
    order): videos decoded by the model's sampling, as `model.prepare_chat` does (model/visuals.py)."""
    config = model.config
    return arrange_messages(sample.messages, list(sample.images), sample.videos, IMAGE_TAG, config.video)


@dataclass
class Skipped:
    id: str
    reason: str


class SupervisedDataset(Dataset):
    def __init__(
        self,
        source: RecordSource,
        model,
        *,
        template: str,
        image_root: str | Path | None = None,  # default: each data file's own directory
        max_length: int | None = None,
        label_quirk: str | None = None,
    ):
        self.source = source
        self.model = model
        self.template = TEMPLATES.get(template)
        self.image_root = Path(image_root) if image_root else None
        self.max_length = max_length
        self.quirk = label_quirk

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict | Skipped:
        raw, fallback = self.source.read(index)
        rid = record_id(raw, fallback)
        try:
            sample = normalise(raw, self.image_root or self.source.folder(index), fallback)
            messages, items = visual_items(sample, self.model)
            seg = self.model.config.seg
            if seg is not None:  # SAM sees the same decoded images
                items = [item if isinstance(item, list) else load_image(item) for item in items]
            processed = self.model.processor.sample(items) if items else None
            layouts = processed.layouts if processed else []
            counts = [self.model.num_image_tokens(layout) for layout in layouts]
            enc = encode(
                rid,
                messages,
                self.model.tokenizer,
                self.template,
                self.model.config.image_token_id,
                counts,
                self.max_length,
                self.quirk,
            )
            extra = self._seg(raw, rid, items[: enc.num_images], enc.input_ids) if seg is not None else {}
        except (BadRecord, ImageError, VideoError) as err:
            return Skipped(rid, skip_reason(self.source.where(index), rid, err))
        views = sum(layout.num_views for layout in layouts[: enc.num_images])
        return extra | {
            "id": rid,
            "input_ids": torch.tensor(enc.input_ids),
            "labels": torch.tensor(enc.labels),
            "pixel_values": processed.pixels[:views] if enc.num_images else None,
            "image_layouts": layouts[: enc.num_images],
            "question": question_text(sample.messages),
        }

    def _seg(self, raw: dict, rid: str, images: list, input_ids: list[int]) -> dict:
        """A segmentation record's masks and SAM inputs (data/seg_records.py)."""
        from .seg_records import seg_targets

        if getattr(self, "_sam_processor", None) is None:
            self._sam_processor = self.model.config.seg.processor()
        stills = [image for image in images if not isinstance(image, list)]
        return seg_targets(raw, rid, stills, input_ids, self.model.config.seg.token_id, self._sam_processor)


def collate(items: list, pad_id: int, pack: bool = False, capacity: int | None = 0) -> dict:
    """The good items as ``inputs`` (one `ModelInputs`) with their ``labels``, ``ids`` and real
    ``tokens``; `skipped` lists the bad ones (id, reason). Unpacked: one right-padded row each,
    joined as the serving engine joins them. `pack`: laid end to end in rows of at most `capacity`
    tokens (data/packing.py; None: one row) when padding would waste enough to be worth it."""
    good = [x for x in items if not isinstance(x, Skipped)]
    skipped = [(x.id, x.reason) for x in items if isinstance(x, Skipped)]
    if not good:
        return {"skipped": skipped, "size": 0}
    tokens = sum(len(x["input_ids"]) for x in good)
    done = {"ids": [x["id"] for x in good], "skipped": skipped, "size": len(good), "tokens": tokens}
    if pack and worth_packing([len(x["input_ids"]) for x in good]):
        inputs, labels = pack_samples(good, pad_id, capacity)
        return done | {"inputs": inputs, "labels": labels}
    width = max(len(x["input_ids"]) for x in good)
    ids = torch.full((len(good), width), pad_id, dtype=torch.long)
    labels = torch.full((len(good), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(good), width), dtype=torch.long)
    for i, x in enumerate(good):
        n = len(x["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = x["input_ids"], x["labels"], 1
    rows = [
        ModelInputs(
            x["input_ids"],
            pixel_values=x["pixel_values"],
            image_layouts=x["image_layouts"],
            questions=[x["question"]],
        )
        for x in good
    ]
    seg = (
        {"sam_images": [x["sam_images"] for x in good], "masks": [x["masks"] for x in good]}
        if "masks" in good[0]
        else {}
    )
    return seg | done | {"inputs": ModelInputs.join(rows, ids, mask), "labels": labels}
