"""Image data at scale: folders, file lists and WebDataset tar shards, as stable image references.

The inputs of teacher features and encoder pretraining (UNICOM / MLCD train on LAION-400M and
COYO-700M, which are fetched with img2dataset). Three kinds, each given as a path:

* a folder, searched recursively in sorted order; an image ``x/name.jpg`` takes its caption from a
  sidecar ``x/name.txt`` if there is one (img2dataset's ``files`` output mode); the ``.tar`` shards
  in it are read as shards (img2dataset's ``webdataset`` output folder);
* a file list (``.txt`` / ``.tsv``): one image path a line, optionally ``<TAB>caption``; relative
  paths are read against the list's folder;
* a tar shard, or a brace pattern of them (``shards/{00000..00099}.tar``), in the WebDataset layout
  img2dataset writes: members ``KEY.jpg`` (or png, webp, ...), ``KEY.txt`` (caption), ``KEY.json``
  (metadata), grouped into samples by key exactly as webdataset's ``group_by_keys`` does
  (consecutive members, key = the name up to the first dot, suffix lowercased, ``__meta__`` names
  skipped). Shards must be uncompressed, as img2dataset writes them: every image is then found by
  an offset and a size, so training can read images in any order by one seek.

Every image gets an id that does not depend on where or when it is read: folder ->
``<folder name>/<relative path>``; list -> the path as written in the list; shard ->
``<shard's folder name>/<shard file name>/<key>``. Work is cut into *chunks*: one per tar shard
(read lazily, so a thousand-shard input costs nothing until a shard is processed), and loose
images (folders, lists, single files) in runs of ``chunk_size``. A bad image is never an error
here: it fails when loaded, with an ImageError naming its id, for the caller to skip and record.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tarfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from PIL import Image

from ..errors import ConfigError, ImageError
from ..extract import IMAGE_SUFFIXES
from ..imaging.io import DEFAULT_MAX_PIXELS, AlphaRule, describe, load_image
from ..imaging.processor import ImageProcessor

logger = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".tsv")
_IMAGE_FIELDS = {suffix.lstrip(".") for suffix in IMAGE_SUFFIXES}  # webdataset field names
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


@dataclass(frozen=True, slots=True)  # slots: a training run holds one per image
class ImageRef:
    """Where one image's bytes are: a whole file, or `size` bytes at `offset` inside a tar shard."""

    id: str
    path: str
    offset: int = -1
    size: int = -1
    caption: str | None = None

    def read(self) -> bytes:
        """The image file's bytes (one seek and one read for a tar member); ImageError naming the id."""
        try:
            with open(self.path, "rb") as f:
                if self.offset < 0:
                    return f.read()
                f.seek(self.offset)
                data = f.read(self.size)
        except FileNotFoundError:
            raise ImageError(f"{self.id}: no such file {self.path}") from None
        except OSError as err:
            raise ImageError(f"{self.id}: cannot read {self.path} ({err.strerror or err})") from None
        if len(data) != self.size:
            raise ImageError(f"{self.id}: {self.path} ends {self.size - len(data)} bytes into this image")
        return data

    def load(self, *, max_pixels: int | None = DEFAULT_MAX_PIXELS, alpha: AlphaRule = "drop") -> Image.Image:
        """The decoded RGB image, through fovea's safe loader; ImageError naming the id."""
        data = self.read()
        try:
            return load_image(data, max_pixels=max_pixels, alpha=alpha)
        except ImageError as err:  # the loader names "<N bytes>"; the id is what a user can find
            raise ImageError(f"{self.id}: {str(err).removeprefix(describe(data) + ': ')}") from None

    def as_dict(self) -> dict:
        """JSON-ready, with only the fields that differ from the defaults (parts hold millions)."""
        defaults = ImageRef("", "")
        return {k: v for k, v in asdict(self).items() if k in ("id", "path") or v != getattr(defaults, k)}

    @classmethod
    def from_dict(cls, data: dict) -> ImageRef:
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {"id", "path"} <= set(data) or set(data) - known:
            raise ConfigError(f"not an image reference: {str(data)[:120]}")
        return cls(**data)


@dataclass(frozen=True)
class Chunk:
    """One unit of work: a tar shard (its refs read when asked), or a run of loose images."""

    source: str
    """What the chunk is and a fingerprint of it (shard path and size, or image count and id hash),
    so a resumed run can tell that a part it finds was made from the same data."""
    shard: str | None = None
    shard_id: str | None = None
    loose: tuple[ImageRef, ...] = ()

    def refs(self) -> list[ImageRef]:
        if self.shard is None:
            return list(self.loose)
        return read_shard(Path(self.shard), self.shard_id)


def scan(inputs: list[str | Path], chunk_size: int = 4096) -> list[list[ImageRef]]:
    """Every image of `inputs`, as the chunks `plan` cuts them into (deterministic)."""
    return [chunk.refs() for chunk in plan(inputs, chunk_size)]


def plan(inputs: list[str | Path], chunk_size: int = 4096) -> list[Chunk]:
    """The chunks of `inputs`, in input order, without reading any tar shard; ids are checked unique
    (within a shard when it is read)."""
    if chunk_size < 1:
        raise ConfigError(f"chunk size must be at least 1, got {chunk_size}")
    chunks: list[Chunk] = []
    loose: list[ImageRef] = []
    owners: dict[str, tuple[int, str]] = {}  # id (or shard id) -> (input number, path) that gave it
    for number, item in enumerate(inputs):
        for path in expand_braces(str(item)):
            refs, shards = _read_input(Path(path))
            for ref in refs:
                _claim(owners, ref.id, (number, path))
            loose.extend(refs)
            if shards:
                chunks.extend(_cut(loose, chunk_size))  # input order is kept: loose images first
                loose = []
                chunks.extend(_shard_chunk(shard, owners, number) for shard in shards)
    chunks.extend(_cut(loose, chunk_size))
    _check_shard_prefixes(chunks, owners)
    return chunks


def expand_braces(pattern: str) -> list[str]:
    """webdataset's shard patterns: numeric ranges ``{000..099}`` (zero-padded as written) and lists
    ``{a,b}``, left to right; an existing path is taken literally."""
    match = _BRACE.search(pattern)
    if match is None or Path(pattern).exists():
        return [pattern]
    head, body, tail = pattern[: match.start()], match.group(1), pattern[match.end() :]
    numbers = _RANGE.fullmatch(body)
    if numbers:
        first, last = numbers.groups()
        padded = any(len(n.lstrip("-")) > 1 and n.lstrip("-")[0] == "0" for n in (first, last))
        width = max(len(first), len(last)) if padded else 0
        step = 1 if int(last) >= int(first) else -1
        options = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    elif "," in body:
        options = body.split(",")
    else:  # not a pattern, like bash: braces kept as written
        return [head + "{" + body + "}" + rest for rest in expand_braces(tail)]
    return [head + option + rest for option in options for rest in expand_braces(tail)]


def decoded_batches(
    refs: list[ImageRef], processor: ImageProcessor, batch_size: int, need_caption: bool = False
) -> Iterator[list[tuple[ImageRef, torch.Tensor | None, str | None]]]:
    """Batches of (ref, (1, 3, S, S) pixels or None, why not or None): a bad image (or, with
    `need_caption`, one without a caption) comes with its reason instead of stopping the batch. The
    next two batches decode on threads (PIL releases the GIL) while the caller runs this one."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="fovea-decode") as pool:
        ahead: deque = deque()
        for start in range(0, len(refs), batch_size):
            batch = refs[start : start + batch_size]
            ahead.append([pool.submit(_decode, ref, processor, need_caption) for ref in batch])
            if len(ahead) > 2:
                yield [job.result() for job in ahead.popleft()]
        while ahead:
            yield [job.result() for job in ahead.popleft()]


def _decode(ref: ImageRef, processor: ImageProcessor, need_caption: bool):
    if need_caption and not ref.caption:
        return ref, None, "no caption (joint features embed an image with its caption)"
    try:
        image = ref.load(max_pixels=processor.config.max_pixels, alpha=processor.config.alpha)
        return ref, processor([image]).pixels, None
    except ImageError as err:
        return ref, None, str(err).removeprefix(f"{ref.id}: ")


def read_shard(path: Path, shard_id: str | None = None) -> list[ImageRef]:
    """The images of one uncompressed tar shard with their offsets, grouped as webdataset does."""
    shard_id = shard_id or _shard_id(path)
    try:
        with tarfile.open(path, mode="r:") as tar:  # "r:": uncompressed only, members read by offset
            members = tar.getmembers()
            end = tar.offset
            refs, imageless = _shard_refs(tar, members, path, shard_id)
    except tarfile.TarError as err:
        raise ConfigError(f"{path}: not a readable uncompressed tar shard ({err})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    size = path.stat().st_size
    # tarfile stops quietly at a cut header; a whole shard ends with a zero block after its last member
    if size < end + tarfile.BLOCKSIZE or any(m.offset_data + m.size > size for m in members):
        raise ConfigError(f"{path}: truncated tar shard ({size} bytes); fetch it again or leave it out")
    if imageless:
        logger.warning(
            "%s: %d sample(s) without an image member left out (first: %s)",
            path,
            len(imageless),
            imageless[0],
        )
    return refs


def _shard_refs(tar, members, path: Path, shard_id: str) -> tuple[list[ImageRef], list[str]]:
    refs, seen, imageless = [], set(), []
    for key, sample in _group(members, path):
        if key in seen:
            raise ConfigError(
                f"{path}: key {key!r} appears twice, apart; a sample's members must be together"
            )
        seen.add(key)
        image = next((m for suffix, m in sample.items() if suffix in _IMAGE_FIELDS), None)
        if image is None:
            imageless.append(key)
            continue
        caption = _caption(tar.extractfile(sample["txt"]).read()) if "txt" in sample else None
        ref_id = f"{shard_id}/{key}"
        refs.append(ImageRef(ref_id, os.path.abspath(path), image.offset_data, image.size, caption))
    return refs, imageless


def _group(members, path: Path):
    """(key, {suffix: member}) per sample: consecutive members with one key (webdataset's rule)."""
    key, sample = None, {}
    for member in members:
        split = _key_and_suffix(member.name) if member.isreg() else None
        if split is None:
            continue
        base, suffix = split
        if base != key:
            if sample:
                yield key, sample
            key, sample = base, {}
        if suffix in sample:
            raise ConfigError(f"{path}: {member.name} appears twice in sample {key!r}")
        sample[suffix] = member
    if sample:
        yield key, sample


def _key_and_suffix(name: str) -> tuple[str, str] | None:
    """webdataset's naming: the key is the member's path up to the first dot of its last part, the
    suffix (lowercased) the rest; a name without one, or under a ``__meta__`` folder or file, is
    not a sample member."""
    first = name.split("/")[0]
    if len(first) >= 4 and first.startswith("__") and first.endswith("__"):
        return None
    folder, _, last = name.rpartition("/")
    stem, dot, suffix = last.partition(".")
    if not stem or not dot:
        return None
    return (f"{folder}/{stem}" if folder else stem), suffix.lower()


def _is_shard(path: str) -> bool:
    name = path.lower()
    if name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")):
        raise ConfigError(f"{path}: a compressed tar shard cannot be read by offset; decompress it first")
    return name.endswith(".tar")


def _shard_chunk(path: Path, owners: dict[str, tuple[int, str]], number: int) -> Chunk:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such tar shard")
    shard_id = _shard_id(path)
    _claim(owners, shard_id, (number, str(path)))
    absolute = os.path.abspath(path)
    return Chunk(f"tar {absolute} ({path.stat().st_size} bytes)", shard=absolute, shard_id=shard_id)


def _shard_id(path: Path) -> str:
    """<folder name>/<shard name>: LAION's and COYO's shards are both 00000.tar, ... in their folders."""
    absolute = Path(os.path.abspath(path))
    return f"{absolute.parent.name}/{absolute.name}"


def _read_input(path: Path) -> tuple[list[ImageRef], list[Path]]:
    """(loose images, tar shards) of one input path."""
    if _is_shard(str(path)):
        return [], [path]
    if path.is_dir():
        return _folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.suffix.lower() in LIST_SUFFIXES:
        return _file_list(path), []
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [ImageRef(str(path), os.path.abspath(path))], []
    raise ConfigError(
        f"{path}: not an image folder, a file list ({', '.join(LIST_SUFFIXES)}), a .tar shard or an image"
    )


def _folder(folder: Path) -> tuple[list[ImageRef], list[Path]]:
    """A folder's images (sorted; sidecar captions) and its tar shards (img2dataset's output folder)."""
    root = Path(os.path.abspath(folder))
    files = {}
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        for name in names:  # hidden files (macOS's ._photo.jpg copies) are not images
            if not name.startswith("."):
                files[Path(directory, name).relative_to(root).as_posix()] = Path(directory, name)
    refs, shards = [], []
    for rel in sorted(files):
        suffix = Path(rel).suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            sidecar = files.get(rel[: -len(suffix)] + ".txt")
            caption = _caption(sidecar.read_bytes()) if sidecar is not None else None
            refs.append(ImageRef(f"{root.name}/{rel}", str(files[rel]), caption=caption))
        elif suffix == ".tar":
            shards.append(files[rel])
    return refs, shards


def _file_list(path: Path) -> list[ImageRef]:
    base = Path(os.path.abspath(path)).parent
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 file list ({err.reason} at byte {err.start})") from None
    refs = []
    for line in lines:
        name, _, caption = line.partition("\t")
        if name.strip():
            caption = caption.strip()
            refs.append(ImageRef(name.strip(), str(base / name.strip()), caption=caption or None))
    return refs


def _caption(data: bytes) -> str | None:
    return data.decode("utf-8", errors="replace").strip() or None


def _claim(owners: dict[str, tuple[int, str]], image_id: str, source: tuple[int, str]) -> None:
    first = owners.get(image_id)
    if first is not None:
        if first[1] == source[1]:
            where = f"twice in {source[1]}" if first == source else f"{source[1]} is given twice"
        else:
            where = f"from {first[1]} and from {source[1]}"
        raise ConfigError(f"duplicate image id {image_id!r}: {where}")
    owners[image_id] = source


def _cut(refs: list[ImageRef], size: int) -> list[Chunk]:
    chunks = []
    for start in range(0, len(refs), size):
        part = tuple(refs[start : start + size])
        digest = hashlib.sha256("\n".join(r.id for r in part).encode()).hexdigest()[:16]
        chunks.append(Chunk(f"{len(part)} images {part[0].id} .. {part[-1].id} (ids {digest})", loose=part))
    return chunks


def _check_shard_prefixes(chunks: list[Chunk], owners: dict[str, tuple[int, str]]) -> None:
    """A loose image's id may not start with a shard's id (a folder named like a shard)."""
    shards = {c.shard_id: c.shard for c in chunks if c.shard_id is not None}
    for chunk in chunks:
        for ref in chunk.loose:
            prefix = "/".join(ref.id.split("/")[:2])
            if prefix in shards and ref.id != prefix:
                raise ConfigError(
                    f"duplicate image id prefix {prefix!r}: {shards[prefix]} and {owners[ref.id][1]}"
                )
