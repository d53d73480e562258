"""Image data at scale: folders, file lists and img2dataset tar shards become stable, unique image
references whose bytes read back exactly; tar samples group as webdataset's own reader groups them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import braceexpand
import pytest
import webdataset as wds
from PIL import Image

from fovea.errors import ConfigError, ImageError
from fovea.imaging.processor import ImageConfig, ImageProcessor
from fovea.pretrain.data import ImageRef, decoded_batches, expand_braces, plan, read_shard, scan

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (40, 220, 220), (220, 40, 220)]


def image_bytes(colour, fmt="PNG", size=(24, 18)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, fmt)
    return out.getvalue()


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """A tar shard as img2dataset writes one (webdataset's TarWriter: each sample's members in
    sorted suffix order: KEY.jpg, KEY.json, KEY.txt)."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for suffix in sorted(members):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size, info.mode = len(members[suffix]), 0o444
                tar.addfile(info, io.BytesIO(members[suffix]))


def make_dataset(root: Path) -> dict[str, Path]:
    """A folder (one sidecar caption, one corrupt image, a hidden file), a file list, two shards."""
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.png").write_bytes(image_bytes(COLOURS[0]))
    (photos / "a.txt").write_text("a red square\n")
    (photos / "sub" / "b.jpg").write_bytes(image_bytes(COLOURS[1], "JPEG", (30, 40)))
    (photos / "sub" / "c.png").write_bytes(image_bytes(COLOURS[2])[:60])  # cut short: undecodable
    (photos / "._a.png").write_bytes(b"\0\5\26\7")  # a macOS AppleDouble file: not an image
    other = root / "other"
    other.mkdir()
    (other / "d.webp").write_bytes(image_bytes(COLOURS[3], "WEBP"))
    (other / "list.tsv").write_text("d.webp\ta yellow square\n\n../photos/a.png\n")
    shards = root / "shards"
    shards.mkdir()
    for s in range(2):
        samples = []
        for k in range(3):
            key = f"{s:05d}{k:04d}"
            meta = json.dumps({"key": key, "caption": f"shard {s} image {k}", "status": "success"})
            members = {"jpg": image_bytes(COLOURS[3 + k], "JPEG"), "txt": f"shard {s} image {k}".encode()}
            samples.append((key, {**members, "json": meta.encode()}))
        write_shard(shards / f"{s:05d}.tar", samples)
        (shards / f"{s:05d}_stats.json").write_text("{}")  # img2dataset's beside-the-shard files
    return {"folder": photos, "list": other / "list.tsv", "shards": shards}


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path)


def test_ids_are_stable_and_unique_and_chunks_follow_the_inputs(dataset):
    inputs = [dataset["folder"], dataset["list"], str(dataset["shards"] / "{00000..00001}.tar")]
    chunks = scan(inputs, chunk_size=2)
    ids = [[ref.id for ref in chunk] for chunk in chunks]
    assert ids == [
        ["photos/a.png", "photos/sub/b.jpg"],
        ["photos/sub/c.png", "d.webp"],
        ["../photos/a.png"],  # the list names a.png again, under its own id: the path as written
        ["shards/00000.tar/000000000", "shards/00000.tar/000000001", "shards/00000.tar/000000002"],
        ["shards/00001.tar/000010000", "shards/00001.tar/000010001", "shards/00001.tar/000010002"],
    ]
    assert scan(inputs, chunk_size=2) == chunks  # deterministic, captions and offsets included
    refs = {ref.id: ref for chunk in chunks for ref in chunk}
    assert refs["photos/a.png"].caption == "a red square" and refs["photos/sub/b.jpg"].caption is None
    assert refs["d.webp"].caption == "a yellow square" and refs["../photos/a.png"].caption is None
    assert refs["shards/00001.tar/000010002"].caption == "shard 1 image 2"
    assert Path(refs["../photos/a.png"].path).resolve() == (dataset["folder"] / "a.png").resolve()
    # img2dataset's output folder (shards, .parquet, _stats.json) is its shards
    assert scan([dataset["shards"]]) == chunks[3:]
    # in other chunk sizes: the same ids
    assert [r.id for c in scan(inputs, chunk_size=100) for r in c] == [i for chunk in ids for i in chunk]


def test_tar_members_read_back_exactly_and_group_as_webdataset_does(dataset):
    shard = dataset["shards"] / "00001.tar"
    refs = read_shard(shard)
    with shard.open("rb") as stream:  # webdataset's own reader over the same shard
        files = wds.tariterators.tar_file_expander([{"url": str(shard), "stream": stream}])
        samples = list(wds.tariterators.group_by_keys(files))
    assert [f"shards/00001.tar/{s['__key__']}" for s in samples] == [r.id for r in refs]
    for ref, sample in zip(refs, samples):
        assert ref.offset >= 0 and ref.read() == sample["jpg"]
        assert ref.caption == sample["txt"].decode() and json.loads(sample["json"])["status"] == "success"
        assert ref.load().size == (24, 18) and ref.load().mode == "RGB"
    assert refs[1].read() == image_bytes(COLOURS[4], "JPEG")


def test_awkward_member_names_group_as_webdataset_does(tmp_path):
    """Folders inside the tar, multi-dot and upper-case suffixes, __meta__ files, a directory."""
    png, shard = image_bytes(COLOURS[0]), tmp_path / "odd.tar"
    with tarfile.open(shard, "w") as tar:
        tar.addfile(tarfile.TarInfo("__index__"), io.BytesIO(b""))
        folder = tarfile.TarInfo("sub")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        names = ["sub/a.JPG", "sub/a.txt", "sub/b.seg.png", "b.png", "dot.x/c.webp", "noext", "d.", "d.png"]
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(png)
            tar.addfile(info, io.BytesIO(png))
    with shard.open("rb") as stream:
        files = wds.tariterators.tar_file_expander([{"url": str(shard), "stream": stream}])
        samples = list(wds.tariterators.group_by_keys(files))
    with_image = [s["__key__"] for s in samples if {"jpg", "png", "webp"} & set(s)]
    assert with_image == ["sub/a", "b", "dot.x/c", "d"]  # sub/b has only a "seg.png" field
    assert [ref.id.removeprefix(f"{tmp_path.name}/odd.tar/") for ref in read_shard(shard)] == with_image


def test_refs_round_trip_through_json(dataset):
    refs = [ref for chunk in scan([dataset["folder"], dataset["shards"] / "00000.tar"]) for ref in chunk]
    back = [ImageRef.from_dict(json.loads(json.dumps(ref.as_dict()))) for ref in refs]
    assert back == refs
    assert "offset" not in refs[0].as_dict() and refs[-1].as_dict()["offset"] == refs[-1].offset
    with pytest.raises(ConfigError, match="not an image reference"):
        ImageRef.from_dict({"id": "x", "path": "y", "colour": "red"})


def test_a_bad_image_is_named_by_its_id(dataset, tmp_path):
    refs = {ref.id: ref for chunk in scan([dataset["folder"]]) for ref in chunk}
    with pytest.raises(ImageError, match=r"^photos/sub/c\.png: cannot decode image"):
        refs["photos/sub/c.png"].load()
    with pytest.raises(ImageError, match=r"^gone: no such file"):
        ImageRef("gone", str(tmp_path / "gone.png")).read()
    shard = read_shard(dataset["shards"] / "00000.tar")[0]
    past_the_end = ImageRef("cut/0", shard.path, offset=shard.offset + 10**6, size=shard.size)
    with pytest.raises(ImageError, match=r"^cut/0: .* ends \d+ bytes into this image"):
        past_the_end.read()
    processor = ImageProcessor(ImageConfig(size=28))
    batches = list(decoded_batches(list(refs.values()), processor, batch_size=2))
    results = {ref.id: (pixels, why) for batch in batches for ref, pixels, why in batch}
    assert [len(b) for b in batches] == [2, 1] and results["photos/a.png"][0].shape == (1, 3, 28, 28)
    assert results["photos/sub/b.jpg"][1] is None and results["photos/sub/b.jpg"][0].shape == (1, 3, 28, 28)
    assert results["photos/sub/c.png"][0] is None and results["photos/sub/c.png"][1].startswith(
        "cannot decode"
    )
    captioned = [r for b in decoded_batches(list(refs.values()), processor, 2, need_caption=True) for r in b]
    assert [why.split(" (")[0] if why else why for _, _, why in captioned] == [
        None,
        "no caption",
        "no caption",
    ]


def test_duplicate_ids_are_refused_naming_both(dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"duplicate image id 'photos/a.png': .*photos is given twice"):
        plan([dataset["folder"], dataset["folder"]])
    (tmp_path / "elsewhere" / "photos").mkdir(parents=True)
    (tmp_path / "elsewhere" / "photos" / "a.png").write_bytes(image_bytes(COLOURS[0]))
    with pytest.raises(ConfigError, match=r"'photos/a.png': from .*/photos and from .*elsewhere/photos$"):
        plan([dataset["folder"], tmp_path / "elsewhere" / "photos"])
    twice = tmp_path / "twice.txt"
    twice.write_text("x.png\ny.png\nx.png\n")
    with pytest.raises(ConfigError, match=r"duplicate image id 'x.png': twice in .*twice.txt"):
        plan([twice])
    copy = tmp_path / "copy" / "shards"
    copy.mkdir(parents=True)
    (copy / "00000.tar").write_bytes((dataset["shards"] / "00000.tar").read_bytes())
    with pytest.raises(ConfigError, match=r"duplicate image id 'shards/00000.tar'"):
        plan([dataset["shards"] / "00000.tar", copy / "00000.tar"])
    lookalike = tmp_path / "other" / "shards" / "00000.tar"  # a folder named like the shard
    lookalike.mkdir(parents=True)
    (lookalike / "000000000.png").write_bytes(image_bytes(COLOURS[0]))
    with pytest.raises(ConfigError, match=r"duplicate image id prefix 'shards/00000.tar'"):
        plan([dataset["shards"] / "00000.tar", lookalike.parent])
    write_shard(tmp_path / "apart.tar", [("k1", {"png": b"1"}), ("k2", {"png": b"2"}), ("k1", {"txt": b"3"})])
    with pytest.raises(ConfigError, match="key 'k1' appears twice"):
        read_shard(tmp_path / "apart.tar")


def test_a_sample_without_an_image_is_left_out_and_logged(tmp_path, caplog):
    write_shard(tmp_path / "s.tar", [("a", {"jpg": image_bytes(COLOURS[0], "JPEG")}), ("b", {"json": b"{}"})])
    assert [ref.id for ref in read_shard(tmp_path / "s.tar")] == [f"{tmp_path.name}/s.tar/a"]
    assert "1 sample(s) without an image member left out (first: b)" in caplog.text


def _cut(shards: Path, tmp_path: Path) -> Path:
    data = (shards / "00000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:2000])
    return tmp_path / "cut.tar"


def _junk(shards: Path, tmp_path: Path) -> Path:
    (tmp_path / "junk.tar").write_bytes(b"not a tar archive " * 100)
    return tmp_path / "junk.tar"


@pytest.mark.parametrize(
    "make, error, expected",
    [
        (lambda shards, tmp: tmp / "nowhere", FileNotFoundError, "nowhere: no such file or folder"),
        (lambda shards, tmp: tmp / "gone.tar", FileNotFoundError, "gone.tar: no such tar shard"),
        (
            lambda shards, tmp: shards / "{00000..00007}.tar",
            FileNotFoundError,
            "00002.tar: no such tar shard",
        ),
        (_cut, ConfigError, "cut.tar: truncated tar shard (2000 bytes)"),
        (_junk, ConfigError, "junk.tar: not a readable uncompressed tar shard"),
        (
            lambda shards, tmp: tmp / "x.tar.gz",
            ConfigError,
            "x.tar.gz: a compressed tar shard cannot be read",
        ),
        (lambda shards, tmp: shards / "00000_stats.json", ConfigError, "not an image folder, a file list"),
    ],
)
def test_bad_inputs_are_one_line_errors_naming_the_file(dataset, tmp_path, make, error, expected):
    with pytest.raises(error) as caught:
        scan([make(dataset["shards"], tmp_path)])
    assert expected in str(caught.value) and len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize(
    "pattern",
    ["s/{00000..00011}.tar", "{a,b}/{8..11}.tar", "x{0..2}{y,z}", "{10..7}", "{-1..01}", "no{pe}.tar"],
)
def test_brace_patterns_expand_as_webdatasets_braceexpand_does(pattern):
    assert expand_braces(pattern) == list(braceexpand.braceexpand(pattern))
