"""Teacher features for cluster discrimination: pooled, L2-normalised embeddings of many images.

UNICOM and MLCD cluster a pretrained CLIP's embeddings of LAION-scale data into pseudo-classes
(reference/unicom-mlcd.md §5, §6.1); this writes those embeddings. The teacher (teacher.py) is any
fovea tower, pooled the way the model itself pools, or a two-tower CLIP directory, optionally with
its captions (UNICOM's joint features).

Output, a folder FEATS::

    run.json                   the settings, written first: a resume with other settings is refused
    parts/part-000000.npy      (n, D) float16, one row per image of input chunk 0
    parts/part-000000.json     {"chunk", "source", "refs": [...], "skipped": [[id, reason], ...]}
    features.json              the index (dim, count, parts in order, skipped), once all parts exist

Every file is written atomically and a part's JSON after its array, so a part either exists whole
or not at all. Under torchrun (RANK / WORLD_SIZE) process r does chunks c = r (mod world); a rerun
of the same command skips finished parts, so a killed run resumes with no id twice and none lost.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..atomic import write_atomic, write_text_atomic
from ..errors import ConfigError
from .data import Chunk, ImageRef, decoded_batches, plan
from .teacher import Teacher, TeacherSpec, build_teacher

logger = logging.getLogger(__name__)

FORMAT = "fovea-features"
_FOREIGN = "exists and was not written by fovea pretrain features; choose another --out"


@dataclass
class Features:
    array: np.ndarray | None
    """(N, D) float32 (None when loaded with vectors=False)."""
    ids: list[str]
    refs: list[ImageRef] | None
    """Where each row's image is (None for a plain .npy)."""


@dataclass
class Summary:
    path: Path
    images: int
    skipped: int
    dim: int
    parts: int
    computed: int
    """Parts this process computed; the others were found finished (resume) or are other processes'."""
    seconds: float


# -- the run -------------------------------------------------------------------------------------


def compute_features(
    teacher: TeacherSpec | str,
    inputs: list[str | Path],
    out: str | Path,
    *,
    batch_size: int = 64,
    chunk_size: int = 4096,
    device: str | None = None,
    progress: bool = False,
    poll_seconds: float = 2.0,
    rows=None,
) -> Summary | None:
    """Write FEATS `out` for `inputs` (see the module docstring); the summary on process 0, else None.
    `rows` makes the rows something other than whole images (`region_features.RegionRows`: its
    settings join run.json, and it writes each part and adds to the index)."""
    start = time.perf_counter()
    spec = TeacherSpec(teacher) if isinstance(teacher, str) else teacher
    rank, world = process_rank()
    settings, chunks = _plan_run(spec, inputs, chunk_size)
    if rows is not None:
        settings |= rows.settings()
    out = Path(out)
    fresh = check_output(out, settings)
    todo = [c for c in range(rank, len(chunks), world) if not _part_done(out, c, chunks[c])]
    model = build_teacher(spec, _device(device)) if todo else None  # a failed download writes nothing
    if fresh:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "run.json", json.dumps(settings, indent=2))
    (out / "parts").mkdir(exist_ok=True)
    if todo:
        known = None if any(chunks[c].shard for c in todo) else sum(len(chunks[c].loose) for c in todo)
        show = progress and rank == 0
        # warnings (skipped images) print above a live bar instead of through it
        logs = logging_redirect_tqdm() if show else nullcontext()
        with tqdm(total=known, desc="features", unit="img", disable=not show) as bar, logs:
            write = rows.write_part if rows is not None else _write_part
            for c in todo:
                write(out, c, chunks[c], model, batch_size, bar)
    wait_for_parts(out, len(chunks), rank, poll_seconds, progress)
    if rank != 0:
        return None
    index = write_index(out, len(chunks), settings)
    if rows is not None:
        index = rows.finish(out, index)
    seconds = time.perf_counter() - start
    return Summary(out, index["count"], index["skipped"], index["dim"], len(chunks), len(todo), seconds)


def _plan_run(spec: TeacherSpec, inputs: list, chunk_size: int) -> tuple[dict, list[Chunk]]:
    """run.json's settings (as they read back from it) and the chunks; refusals come here, before
    anything is written or downloaded."""
    settings = {"format": FORMAT, **spec.settings()}
    chunks = plan(inputs, chunk_size)
    if not chunks:
        raise ConfigError(f"no images found in {' '.join(map(str, inputs))}")
    settings |= {"inputs": [os.path.abspath(str(item)) for item in inputs], "chunk_size": chunk_size}
    settings["chunks"] = len(chunks)
    return json.loads(json.dumps(settings)), chunks


def process_rank() -> tuple[int, int]:
    """(rank, world size): torch.distributed's when a process group is up, else torchrun's env."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world


def _device(device: str | None) -> str:
    if device is not None:
        return device
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per process under torchrun


def check_output(out: Path, settings: dict) -> bool:
    """Refuse an `out` this command may not write: a file, a folder fovea did not write, or one begun
    with other settings. True when run.json is to be written (new, or begun but nothing computed)."""
    run = out / "run.json"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; --out is a folder")
    if run.is_file():
        computed = any((out / "parts").glob("part-*.json"))
        _check_same(run, settings if computed else {"format": FORMAT})
        return not computed
    # another process may be writing run.json this moment: its temporary file is not foreign
    if out.is_dir() and [p for p in out.iterdir() if not p.name.startswith(".run.json.")]:
        raise ConfigError(f"{out}: {_FOREIGN}")
    return True


def _check_same(run: Path, settings: dict) -> None:
    before = _read_json(run)
    if before.get("format") != FORMAT:
        raise ConfigError(f"{run.parent}: {_FOREIGN}")
    before, settings = _flat(before), _flat(settings)
    for key, value in settings.items():
        if before.get(key) != value:
            raise ConfigError(
                f"{run.parent} was begun with {key}={_short(before.get(key))}, this run has "
                f"{key}={_short(value)}: rerun with the same settings to resume, or choose another --out"
            )


def _flat(settings: dict, prefix: str = "") -> dict:
    """{"image": {"mode": ...}} -> {"image.mode": ...}: a refusal names the one setting that differs."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[prefix + key] = value
    return flat


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- parts ---------------------------------------------------------------------------------------


def part_files(out: Path, c: int | str) -> tuple[Path, Path]:
    stem = out / "parts" / (c if isinstance(c, str) else f"part-{c:06d}")
    return stem.with_suffix(".npy"), stem.with_suffix(".json")


def _complete(out: Path, c: int) -> bool:
    return all(p.is_file() for p in part_files(out, c))


def _part_done(out: Path, c: int, chunk: Chunk) -> bool:
    if not _complete(out, c):
        return False
    meta = part_files(out, c)[1]
    source = _read_json(meta).get("source")
    if source != chunk.source:
        raise ConfigError(
            f"{meta}: made from {source}, but chunk {c} is now {chunk.source}: the data changed since this "
            "run began; choose another --out"
        )
    return True


def _write_part(out: Path, c: int, chunk: Chunk, teacher: Teacher, batch_size: int, bar) -> None:
    rows, kept, skipped = [], [], []
    for batch in decoded_batches(chunk.refs(), teacher.processor, batch_size, teacher.joint):
        good = [(ref, pixels) for ref, pixels, _ in batch if pixels is not None]
        for ref, _, reason in batch:
            if reason is not None:
                logger.warning("skipped %s: %s", ref.id, reason)
                skipped.append([ref.id, reason])
        if good:
            captions = [ref.caption for ref, _ in good] if teacher.joint else None
            embedded = teacher.embed(torch.cat([pixels for _, pixels in good]), captions)
            rows.append(embedded.to(torch.float16).cpu().numpy())
            kept.extend(ref for ref, _ in good)
        bar.update(len(batch))
    array = np.concatenate(rows) if rows else np.zeros((0, teacher.dim), np.float16)
    npy, meta = part_files(out, c)
    save_npy(npy, array)
    part = {"chunk": c, "source": chunk.source, "refs": [r.as_dict() for r in kept], "skipped": skipped}
    write_text_atomic(meta, json.dumps(part))  # last: its presence marks the part finished


def wait_for_parts(out: Path, count: int, rank: int, poll_seconds: float, progress: bool, done=None) -> None:
    """A barrier when a process group is up; else process 0 polls for the parts (so any launcher
    works, and no collective timeout fires while a slower process finishes its shards). `done(out,
    c)` says whether part c is finished (default: its array and its JSON exist)."""
    done = done or _complete
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        return
    missing = [c for c in range(count) if not done(out, c)] if rank == 0 else []
    if not missing:
        return
    logger.info("waiting for %d part(s) from the other processes", len(missing))
    with tqdm(total=len(missing), desc="other processes", unit="part", disable=not progress) as bar:
        while missing:
            time.sleep(poll_seconds)
            still = [c for c in missing if not done(out, c)]
            bar.update(len(missing) - len(still))
            missing = still


def write_index(out: Path, chunks: int, settings: dict) -> dict:
    """features.json from the finished parts (each checked: as many rows as images)."""
    parts, count, skipped, dim = [], 0, 0, None
    for c in range(chunks):
        npy, meta = part_files(out, c)
        info, shape = _read_json(meta), np.load(npy, mmap_mode="r").shape
        if shape[0] != len(info["refs"]) or dim not in (None, shape[1]):
            raise ConfigError(
                f"{npy}: {shape} does not fit its {len(info['refs'])} images; delete it and rerun"
            )
        dim = shape[1]
        parts.append({"name": npy.stem, "count": shape[0], "skipped": len(info["skipped"])})
        count, skipped = count + shape[0], skipped + len(info["skipped"])
    index = {"format": FORMAT, "version": 1, "dim": dim, "count": count, "dtype": "float16"}
    index |= {"normalised": True, "skipped": skipped, "tower": settings["tower"]}
    index |= {"embedding": settings["embedding"], "joint": settings["joint"], "parts": parts}
    write_text_atomic(out / "features.json", json.dumps(index, indent=2))
    return index


# -- reading -------------------------------------------------------------------------------------


def load_features(path: str | Path, *, vectors: bool = True) -> Features:
    """Features from a FEATS folder (every part, in order, with its image refs) or an (N, D) .npy.
    ``vectors=False`` reads only the image refs (training needs no teacher vectors; at LAION scale
    they are terabytes): ``array`` is then None, the parts' shapes are still checked."""
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, vectors)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ConfigError(f"{path}: not a .npy array ({err})") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise ConfigError(
            f"{path}: expected an (N, D) array, got shape {getattr(array, 'shape', '(an .npz archive)')}"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    return Features(array, [str(i) for i in range(len(array))], None)


def _load_folder(path: Path, vectors: bool = True) -> Features:
    index_file = path / "features.json"
    if not index_file.is_file():
        raise ConfigError(_incomplete(path))
    index = _read_json(index_file)
    if index.get("format") != FORMAT:
        raise ConfigError(f"{index_file}: not an index written by fovea pretrain features")
    array = np.empty((index["count"], index["dim"]), np.float32) if vectors else None
    refs, count = [], index["count"]
    for part in index["parts"]:
        npy, meta = part_files(path, part["name"])
        if not (npy.is_file() and meta.is_file()):
            raise ConfigError(f"{path}: {part['name']} is in features.json but its files are missing")
        block, part_refs = np.load(npy, mmap_mode="r"), _read_json(meta)["refs"]
        if block.shape != (len(part_refs), index["dim"]) or len(refs) + len(block) > count:
            raise ConfigError(f"{npy}: shape {block.shape} does not fit features.json")
        if array is not None:  # filled in place: no second copy of the set
            array[len(refs) : len(refs) + len(block)] = block
        refs.extend(ImageRef.from_dict(r) for r in part_refs)
    if len(refs) != count:
        raise ConfigError(f"{index_file}: says {count} features, the parts hold {len(refs)}")
    return Features(array, [r.id for r in refs], refs)


def _incomplete(path: Path) -> str:
    run = path / "run.json"
    if not run.is_file():
        return f"{path}: not a features folder (no features.json); give an --out of fovea pretrain features"
    chunks = _read_json(run).get("chunks", 0)
    missing = [f"part-{c:06d}" for c in range(chunks) if not _complete(path, c)]
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    what = (
        f"{len(missing)} of {chunks} parts missing ({shown})" if missing else "its index is not written yet"
    )
    return f"{path}: incomplete, {what}; rerun the same fovea pretrain features command to finish it"


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.save would add ".npy" to a temporary name
            np.save(f, array)

    write_atomic(path, write)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def write_features(out: str | Path, refs: list[ImageRef], array: np.ndarray, *, teacher: str) -> dict:
    """A FEATS folder (one part) for features computed elsewhere, with the images they describe,
    so `fovea pretrain train` can read the images (a bare .npy serves cluster and assign only)."""
    out, array = Path(out), np.asarray(array, dtype=np.float32)
    if out.exists():
        raise ConfigError(f"{out}: exists; write the features to a new folder")
    if array.ndim != 2 or len(array) != len(refs):
        raise ConfigError(f"features of shape {array.shape} do not fit {len(refs)} images")
    array = array / np.linalg.norm(array, axis=1, keepdims=True)
    settings = {"format": FORMAT, "tower": teacher, "embedding": "precomputed", "joint": False, "chunks": 1}
    (out / "parts").mkdir(parents=True)
    write_text_atomic(out / "run.json", json.dumps(settings, indent=2))
    npy, meta = part_files(out, 0)
    save_npy(npy, array.astype(np.float16))
    part = {"chunk": 0, "source": "precomputed", "refs": [r.as_dict() for r in refs], "skipped": []}
    write_text_atomic(meta, json.dumps(part))
    return write_index(out, 1, settings)
