"""What a forward pass reads, as typed objects: `ModelInputs` (text and images) and `ImageBatch`.

`prepare` and `prepare_chat` build one `ModelInputs` per prompt; `ModelInputs.join` stacks
several (the serving engine's prefill, the training collator) and is the only place rows are
renumbered; `VisionLanguageModel.embed_inputs` reads them. A new kind of input (video frames,
region boxes, mask targets) is a field here, filled by those builders and read by the model, and
reaches training, `generate`, `chat`, the session, the server and eval without touching them.

`ModelInputs` is also a read-only mapping of its fields, as transformers' ``BatchEncoding`` is, so
``model(**inputs)`` and ``inputs["input_ids"]`` work.

    input_ids (B, T)   attention_mask (B, T)   pixel_values (V, 3, S, S): every view of every image
    position_ids (B, T): packed rows only
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

from ..imaging.processor import ImageLayout


@dataclass
class ImageBatch:
    """The visual side of a batch: every view, each image's layout, the row each image belongs to,
    and each row's question (question-aware fusers read it)."""

    pixel_values: torch.Tensor
    layouts: list[ImageLayout]
    samples: list[int]
    questions: list[str] | None = None

    def __post_init__(self) -> None:
        views = sum(layout.num_views for layout in self.layouts)
        if self.pixel_values.shape[0] != views:
            raise ValueError(
                f"pixel_values has {self.pixel_values.shape[0]} views but the image layouts describe {views}"
            )
        if len(self.samples) != len(self.layouts):
            raise ValueError(
                f"image_samples names {len(self.samples)} images but there are {len(self.layouts)} layouts"
            )
        if self.questions is not None and max(self.samples, default=-1) >= len(self.questions):
            raise ValueError(
                f"an image belongs to row {max(self.samples)} but only {len(self.questions)} questions were given"
            )

    def view_rows(self) -> torch.Tensor:
        """(V,) the batch row of every view."""
        return torch.tensor(
            [r for r, layout in zip(self.samples, self.layouts) for _ in range(layout.num_views)]
        )


@dataclass(frozen=True)
class ModelInputs(Mapping):
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None = None
    pixel_values: torch.Tensor | None = None
    image_layouts: list[ImageLayout] | None = None
    image_samples: list[int] | None = None
    """The batch row of each image (default: row 0 for all)."""
    questions: list[str] | None = None
    """One text per row: the question a question-aware fuser conditions on (packed: per sample)."""
    position_ids: torch.Tensor | None = None
    """Packed rows (data/packing.py): each sample's positions restart at 0, the attention mask is
    None, and the LM attends within each sample; ``image_samples`` then name samples, not rows."""

    @property
    def images(self) -> ImageBatch | None:
        return images_of(self.pixel_values, self.image_layouts, self.image_samples, self.questions)

    def replace(self, **changes) -> ModelInputs:
        return dataclasses.replace(self, **changes)

    @classmethod
    def join(
        cls, rows: list[ModelInputs], input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> ModelInputs:
        """Single-row inputs as one batch (row i = rows[i]) over the padded `input_ids`: pixels
        concatenated, layouts in order, each image's row renumbered, one question per row."""
        pixels = [r.pixel_values for r in rows if r.pixel_values is not None]
        layouts = [layout for r in rows for layout in r.image_layouts or []]
        samples = [row for row, r in enumerate(rows) for _ in r.image_layouts or []]
        return cls(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=torch.cat(pixels) if pixels else None,
            image_layouts=layouts or None,
            image_samples=samples or None,
            questions=[q for r in rows for q in r.questions or [""]],
        )

    # -- the mapping view (model(**inputs), inputs["input_ids"]) --------------------------------

    def __getitem__(self, key: str):
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS)


_FIELDS = tuple(f.name for f in dataclasses.fields(ModelInputs))


def images_of(pixel_values, layouts, samples, questions) -> ImageBatch | None:
    """The `ImageBatch` of forward-style arguments; None when there are no images."""
    if pixel_values is None or not layouts:
        return None
    rows = samples if samples is not None else [0] * len(layouts)
    return ImageBatch(pixel_values, list(layouts), list(rows), questions)
