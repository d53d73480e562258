"""`fovea bench convert`: the embodied benchmarks' released files -> the parquet files evaluation reads.

The output schemas are those of the MLCD-Embodied benchmark scripts, so files made here and
files made there are interchangeable:

* OpenEQA -> ``openeqa_hm3d.parquet`` and ``openeqa_scannet.parquet``: ``id`` (question_id),
  ``type`` (``openeqa_<hm3d-v0|scannet-v0>_<category, spaces as '-'>``), ``question``, ``images``
  (relative paths ``openeqa_val/<episode>/<frame>``), ``answer``, ``extra_answers`` (list or null).
  Up to 32 frames per episode, evenly spaced (``frames[::max(1, n // 32)][:32]``), copied beside.
  Unlike the original (which lists the folder unsorted), the frames are kept in time order.
* RoboVQA -> ``robovqa_val.parquet``: ``id`` (``robovqa_<record number>_<task tag>``), ``question``,
  ``image1`` .. ``image8`` (every other frame, JPEG, ``robovqa_val/robovqa_<n>/<k>.jpg``), ``answer``.
  Questions are rewritten as the original does ("Q: satisfied" -> "is it satisfied", ...).

A record that cannot be converted (no frames, an unknown scene source, no "A:" in a task) is
listed in the report with its id and left out; the others are written.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .tasks import DataError

SOURCES = {"hm3d-v0": "openeqa_hm3d.parquet", "scannet-v0": "openeqa_scannet.parquet"}


@dataclass
class ConvertReport:
    files: dict[str, int] = field(default_factory=dict)
    """Written parquet file -> rows."""
    problems: list[str] = field(default_factory=list)


def openeqa(source: str | Path, out: str | Path, frames: int = 32, progress: bool = True) -> ConvertReport:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src, dst = Path(source), Path(out)
    questions_file = src / "open-eqa-v0.json"
    try:
        questions = json.loads(questions_file.read_text())
    except FileNotFoundError:
        raise DataError(f"{questions_file}: not found (the OpenEQA questions file)") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{questions_file}: not JSON ({err.msg} at line {err.lineno})") from None
    report, rows = ConvertReport(), {name: [] for name in SOURCES.values()}
    copied: dict[str, list[str]] = {}
    for q in tqdm(questions, desc="openeqa", unit="q", disable=not progress):
        qid = q.get("question_id", "?")
        try:
            episode = q["episode_history"]
            top = episode.split("/")[0]
            if top not in SOURCES:
                raise DataError(f"unknown scene source {top!r} (expected {' or '.join(SOURCES)})")
            if episode not in copied:
                copied[episode] = _copy_frames(
                    src / "frames" / episode, dst / "openeqa_val" / episode, frames
                )
            rows[SOURCES[top]].append(
                {
                    "id": qid,
                    "type": f"openeqa_{top}_{q['category'].replace(' ', '-')}",
                    "question": q["question"],
                    "images": [f"openeqa_val/{episode}/{name}" for name in copied[episode]],
                    "answer": q["answer"],
                    "extra_answers": q.get("extra_answers"),
                }
            )
        except (DataError, KeyError, AttributeError) as err:
            report.problems.append(f"openeqa question {qid}: {_why(err)}")
    dst.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("type", pa.string()),
            ("question", pa.string()),
            ("images", pa.list_(pa.string())),
            ("answer", pa.string()),
            ("extra_answers", pa.list_(pa.string())),
        ]
    )
    for name, items in rows.items():
        if items:
            pq.write_table(pa.Table.from_pylist(items, schema=schema), dst / name)
            report.files[str(dst / name)] = len(items)
    return report


def _copy_frames(folder: Path, target: Path, keep: int) -> list[str]:
    files = sorted(folder.glob("*-rgb.png"))
    if not files:
        raise DataError(f"no *-rgb.png frames in {folder}")
    chosen = files[:: max(1, len(files) // keep)][:keep]
    target.mkdir(parents=True, exist_ok=True)
    for f in chosen:
        if not (target / f.name).is_file():
            shutil.copyfile(f, target / f.name)
    return [f.name for f in chosen]


def _why(err: Exception) -> str:
    return f"missing field {err}" if isinstance(err, KeyError) else str(err)


# -- RoboVQA -------------------------------------------------------------------------------------

_TASK_TAG = re.compile(r"(<task[:\w]*>)")
_PRED_TAG = re.compile(r"</?PRED[\w:]*>")
_REWRITES = [
    (". Q: immediate next step", ". what is the immediate next step"),
    (". Q: next 5 step", ". what are the next 5 step"),
    (". Q: satisfied", ". is it satisfied"),
    (". Q: possible right now", ". is it possible right now"),
    (" Q: immediate next step", ". what is the immediate next step"),
    (" Q: next 5 step", ". what are the next 5 step"),
    (" Q: satisfied", ". is it satisfied"),
    (" Q: possible right now", ". is it possible right now"),
]


def robovqa_questions(text: str) -> list[tuple[str, str, str]]:
    """(task tag, question, answer) for every task in one RoboVQA episode text."""
    parts = _TASK_TAG.split(text)
    out = []
    for tag, body in zip(parts[1::2], parts[2::2]):
        body = _PRED_TAG.sub("", body).strip()
        if "A:" not in body:
            raise DataError(f"task {tag} has no 'A:' answer")
        question, answer = (s.strip() for s in body.split("A:", 1))
        for old, new in _REWRITES:
            question = question.replace(old, new)
        out.append((tag.strip("<>"), question.replace("Q: ", ""), answer.replace("A: ", "")))
    return out


def robovqa(
    source: str | Path, out: str | Path, first_id: int = 220577, progress: bool = True
) -> ConvertReport:
    """Validation TFRecords (SequenceExample: ``images`` JPEG bytes, ``texts``) -> parquet + JPEGs.
    Record numbers start at `first_id` (220577: the numbering of the published benchmark)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tfrecord import tfrecord_loader

    src, dst = Path(source), Path(out)
    files = sorted(p for p in (src.glob("val*") if src.is_dir() else [src]) if p.is_file())
    if not files:
        raise DataError(f"{src}: no RoboVQA validation TFRecord files (val*)")
    report, rows, vid = ConvertReport(), [], first_id
    bar = tqdm(desc="robovqa", unit="episode", disable=not progress)
    for path in files:
        try:
            records = tfrecord_loader(
                str(path), None, description=[], sequence_description=["images", "texts"]
            )
            for _, seq in records:
                name = f"robovqa_{vid:06d}"
                try:
                    frames = seq["images"][::2][:8]
                    if not frames:
                        raise DataError("no frames")
                    text = bytes(seq["texts"][0]).decode("utf-8")
                    qas = robovqa_questions(text)
                    (dst / "robovqa_val" / name).mkdir(parents=True, exist_ok=True)
                    images = {}
                    for k, frame in enumerate(frames, 1):
                        rel = f"robovqa_val/{name}/{k:02d}.jpg"
                        (dst / rel).write_bytes(bytes(frame))
                        images[f"image{k}"] = rel
                    for tag, question, answer in qas:
                        rows.append({"id": f"{name}_{tag}", "question": question, **images, "answer": answer})
                except (DataError, KeyError, IndexError, UnicodeDecodeError) as err:
                    report.problems.append(f"robovqa record {name} ({path.name}): {_why(err)}")
                vid += 1
                bar.update(1)
        except (OSError, ValueError) as err:  # a truncated or foreign file: name it, keep the rest
            report.problems.append(f"{path}: unreadable TFRecord ({err})")
    bar.close()
    columns = ["id", "question", *[f"image{k}" for k in range(1, 9)], "answer"]
    table = pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in columns]))
    dst.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dst / "robovqa_val.parquet")
    report.files[str(dst / "robovqa_val.parquet")] = len(rows)
    return report
