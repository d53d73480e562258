"""`fovea data check`: every problem a training run would skip, reported before the run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import ImageError
from ..imaging.io import load_image
from .records import BadRecord, normalise, record_id, skip_reason
from .sources import RecordSource


@dataclass
class CheckReport:
    total: int = 0
    images: int = 0
    problems: list[str] = field(default_factory=list)


def check_data(
    data: str | Path, image_root: str | Path | None = None, decode: bool = False, progress: bool = True
) -> CheckReport:
    source = RecordSource(data)
    report = CheckReport(total=len(source))
    root = Path(image_root) if image_root else None
    for i in tqdm(range(len(source)), disable=not progress, desc="check", unit="record"):
        raw, fallback = source.read(i)
        try:
            sample = normalise(raw, root or source.folder(i), fallback)
            for path in sample.images:
                report.images += 1
                if decode:
                    load_image(path)
        except (BadRecord, ImageError) as err:  # the same line a training run would log
            report.problems.append(skip_reason(source.where(i), record_id(raw, fallback), err))
    return report
