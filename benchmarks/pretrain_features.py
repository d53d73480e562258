"""Teacher features: `fovea pretrain features` vs the loop a user would write by hand.

A small random CLIP vision tower at 224 px (width 256, 4 layers, patch 16) is saved once by
transformers with its ``preprocessor_config.json``; both sides load that directory. N photo-like
images (smooth noise, shapes and grain, shortest side 256 px, several aspect ratios) are written
as a folder of PNGs and as one img2dataset-style tar shard (``KEY.jpg`` JPEG + ``KEY.txt``).

* fovea: ``compute_features(TeacherSpec(tower, pretrained=True), [input], out)``, a fresh --out
  each run (the whole command: plan, load the tower, decode, preprocess, embed, write the parts);
* reference: ``CLIPImageProcessorPil`` and ``CLIPVisionModel`` from the same directory, then
  batch by batch ``Image.open(...).convert("RGB")``, the processor, ``pooler_output`` and
  ``F.normalize``, in one thread of Python (tarfile for the shard). ``CLIPImageProcessor`` is this
  class when torchvision is not installed; it is named here so the numbers do not depend on that.

Checks the two give the same features (cosine of fovea's float16 rows with the reference's), then
reports images/s of each (median of alternating repeats, after one warm-up), the ratio, the
seconds of a resume (the same command again on a finished FEATS folder), and where fovea's time
goes (decode, resize + normalise, tower: each timed alone, sequentially, over the same images).

    python benchmarks/pretrain_features.py [--images 512] [--batch-size 64] [--repeats 3]
        [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image, ImageDraw, ImageFilter
from transformers import CLIPVisionConfig, CLIPVisionModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from fovea.pretrain.data import plan
from fovea.pretrain.features import compute_features, load_features
from fovea.pretrain.teacher import TeacherSpec, build_teacher

from common import interleaved, table

SIZE = 224
CHUNK = 4096  # compute_features' default: every input here is one chunk
BREAKDOWN = 128  # images the stage breakdown times
SHAPES = [(256, 256), (256, 320), (320, 256), (256, 384), (384, 256)]  # (height, width)


# -- data ----------------------------------------------------------------------------------------


def photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """Smooth colour fields, a few filled shapes and sensor-like grain: compresses like a photo."""
    low = (rng.random((height // 32 + 1, width // 32 + 1, 3)) * 255).astype("uint8")
    image = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, width - 16)), int(rng.integers(0, height - 16))
        x1, y1 = x0 + int(rng.integers(16, width // 2)), y0 + int(rng.integers(16, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(1.0))
    grain = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype("uint8"))


def make_images(root: Path, n: int) -> tuple[Path, Path]:
    """(folder of n PNGs, tar shard of the same n as JPEG with captions), keys in sorted order."""
    rng = np.random.default_rng(0)
    folder, shards = root / "images", root / "shards"
    folder.mkdir()
    shards.mkdir()
    shard = shards / "00000.tar"
    with tarfile.open(shard, "w") as tar:  # uncompressed, as img2dataset writes
        for i in range(n):
            key = f"{i:09d}"
            image = photo(rng, *SHAPES[i % len(SHAPES)])
            image.save(folder / f"{key}.png")
            jpeg = io.BytesIO()
            image.save(jpeg, format="JPEG", quality=90)
            for name, data in [(f"{key}.jpg", jpeg.getvalue()), (f"{key}.txt", f"photo {i}".encode())]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return folder, shard


def make_tower(directory: Path) -> None:
    """A random CLIP vision tower and its image processor, saved by transformers."""
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=SIZE,
        patch_size=16,
    )
    CLIPVisionModel(config).save_pretrained(directory)
    processor = CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    processor.save_pretrained(directory)
    if not (directory / "preprocessor_config.json").is_file():
        raise RuntimeError(f"{directory}: transformers wrote no preprocessor_config.json")


# -- the two sides -------------------------------------------------------------------------------


def folder_images(folder: Path) -> Iterator[tuple[str, Image.Image]]:
    for path in sorted(folder.glob("*.png")):
        yield path.stem, Image.open(path).convert("RGB")


def shard_images(shard: Path) -> Iterator[tuple[str, Image.Image]]:
    with tarfile.open(shard) as tar:
        for member in tar:
            if member.name.endswith(".jpg"):
                data = tar.extractfile(member).read()
                yield member.name.removesuffix(".jpg"), Image.open(io.BytesIO(data)).convert("RGB")


def reference(tower: Path, images: Iterator, batch_size: int) -> tuple[list[str], torch.Tensor]:
    """(keys, (N, D) float32 unit features), the plain way."""
    processor = CLIPImageProcessorPil.from_pretrained(tower)
    model = CLIPVisionModel.from_pretrained(tower).eval()
    keys, rows = [], []
    with torch.inference_mode():
        while batch := list(itertools.islice(images, batch_size)):
            pixels = processor(images=[im for _, im in batch], return_tensors="pt")["pixel_values"]
            rows.append(F.normalize(model(pixel_values=pixels).pooler_output, dim=-1))
            keys += [key for key, _ in batch]
    return keys, torch.cat(rows)


class Fovea:
    """compute_features into a fresh folder each call."""

    def __init__(self, tower: Path, root: Path, batch_size: int):
        self.spec = TeacherSpec(str(tower), pretrained=True)
        self.root, self.batch_size, self.runs = root, batch_size, 0

    def __call__(self, source: Path) -> Path:
        self.runs += 1
        out = self.root / f"feats-{self.runs:03d}"
        compute_features(
            self.spec, [source], out, batch_size=self.batch_size, chunk_size=CHUNK, progress=False
        )
        return out

    def resume(self, out: Path, source: Path) -> None:
        summary = compute_features(
            self.spec, [source], out, batch_size=self.batch_size, chunk_size=CHUNK, progress=False
        )
        assert summary.computed == 0, "a rerun on a finished folder computed a part"


def cosine(out: Path, keys: list[str], ref: torch.Tensor) -> float:
    """The smallest cosine between fovea's float16 row and the reference's, matched by key."""
    feats = load_features(out)
    ours = dict(zip((i.rsplit("/", 1)[-1].split(".")[0] for i in feats.ids), feats.array, strict=True))
    if sorted(ours) != sorted(keys):
        raise AssertionError("fovea and the reference embedded different images")
    mine = torch.from_numpy(np.stack([ours[k] for k in keys]))
    return F.cosine_similarity(mine, ref, dim=-1).min().item()


# -- timing --------------------------------------------------------------------------------------


def breakdown(tower: Path, source: Path, batch_size: int) -> dict[str, float]:
    """Seconds per image of fovea's three stages, each alone and in one thread of Python: read +
    decode (ImageRef.load), resize + normalise (the teacher's ImageProcessor), the tower."""
    teacher = build_teacher(TeacherSpec(str(tower), pretrained=True))
    refs = [ref for chunk in plan([source], CHUNK) for ref in chunk.refs()][:BREAKDOWN]
    start = time.perf_counter()
    decoded = [ref.load() for ref in refs]
    decode = time.perf_counter() - start
    start = time.perf_counter()
    pixels = torch.cat([teacher.processor([image]).pixels for image in decoded])
    resize = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        teacher.embed(pixels[i : i + batch_size])
    tower_s = time.perf_counter() - start
    return {name: t / len(refs) for name, t in zip(("decode", "resize", "tower"), (decode, resize, tower_s))}


def run(n: int, batch_size: int, repeats: int) -> str:
    with tempfile.TemporaryDirectory(prefix="fovea-bench-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        folder, shard = make_images(root, n)
        tower = root / "tower"
        make_tower(tower)
        setup = time.perf_counter() - start
        fovea = Fovea(tower, root, batch_size)
        inputs = {"folder (PNG)": (folder, folder_images), "tar shard (JPEG)": (shard, shard_images)}

        # warm-up, and the check that both sides give the same features
        checks = {}
        for name, (source, images) in inputs.items():
            keys, ref = reference(tower, images(source), batch_size)
            out = fovea(source)
            checks[name] = (out, cosine(out, keys, ref))

        fns: dict[str, Callable[[], object]] = {}
        for name, (source, images) in inputs.items():
            fns[f"fovea {name}"] = lambda s=source: fovea(s)
            fns[f"ref {name}"] = lambda s=source, im=images: reference(tower, im(s), batch_size)
        for name, (source, _) in inputs.items():
            fns[f"resume {name}"] = lambda o=checks[name][0], s=source: fovea.resume(o, s)
        times = interleaved(fns, repeats, warmup=False)  # warmed up above
        stages = breakdown(tower, folder, batch_size), breakdown(tower, shard, batch_size)

    rows = []
    for (name, (_, low)), stage in zip(checks.items(), stages, strict=True):
        ours, ref = n / times[f"fovea {name}"], n / times[f"ref {name}"]
        rows.append(
            [name, f"{ref:.1f}", f"{ours:.1f}", f"**{ours / ref:.2f}x**", f"{times[f'resume {name}']:.4f}"]
            + [f"{stage[s] * 1e3:.2f}" for s in ("decode", "resize", "tower")]
            + [f"{low:.5f}"]
        )
    head = ["input", "reference img/s", "fovea img/s", "fovea / reference", "resume s"]
    head += ["decode ms/img", "resize ms/img", "tower ms/img", "min cosine (fp16)"]
    about = (
        f"N = {n} images, batch {batch_size}, CLIP vision 224 px (width 256, 4 layers, patch 16), "
        f"float32 on CPU, median of {repeats}; {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
        f"threads, load average {os.getloadavg()[0]:.1f}; setup {setup:.1f} s"
    )
    note = (
        "decode / resize / tower: fovea's stages each timed alone, sequentially (no overlap), over the "
        f"first {min(n, BREAKDOWN)} images; the run overlaps decode + resize (threads) with the tower."
    )
    return about + "\n\n" + table(head, rows) + "\n\n" + note


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads, both sides (default: all)")
    parser.add_argument("--quick", action="store_true", help="128 images, one repeat: a smoke run")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()  # a loading bar per run would hide the table
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.repeats = 128, 1
    start = time.perf_counter()
    print(run(args.images, args.batch_size, args.repeats))
    print(f"\n({time.perf_counter() - start:.0f} s in all)")
