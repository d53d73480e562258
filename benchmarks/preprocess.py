"""AnyRes preprocessing: fovea's ImageProcessor vs transformers' LlavaNextImageProcessor (PIL).

Same images, same settings (336 px tiles, the MLCD-LLaVA-NeXT CLIP pinpoints, and the
OneVision-style (1x1)..(6x6) range at 384 px); checks the outputs are equal, then reports the
median images/s of each, measured alternately in one run, and the ratio.

    python benchmarks/preprocess.py [--images 24] [--repeats 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from fovea.imaging import anyres
from fovea.imaging.processor import ImageConfig, ImageProcessor

from common import interleaved, table

SETTINGS = {
    "CLIP-336, 5 pinpoints": (336, [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]),
    "SigLIP-384, (1x1)..(6x6)": (384, "(1x1),...,(6x6)"),
}


def images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(480, 640), (1080, 1920), (768, 1024), (300, 1200), (2000, 1500), (224, 224)]
    return [
        Image.fromarray((rng.random((*sizes[i % len(sizes)], 3)) * 255).astype("uint8")) for i in range(n)
    ]


def measure(
    ours: ImageProcessor, ref: LlavaNextImageProcessorPil, data: list, repeats: int
) -> dict[str, float]:
    """Images/s of each side, one image per call and eight per call, measured alternately."""
    batches = [data[i : i + 8] for i in range(0, len(data), 8)]
    times = interleaved(
        {
            "fovea": lambda: [ours([im]) for im in data],
            "transformers": lambda: [ref(images=[im]) for im in data],
            "fovea-batch": lambda: [ours(b) for b in batches],
            "transformers-batch": lambda: [ref(images=b) for b in batches],
        },
        repeats,
    )
    return {name: len(data) / t for name, t in times.items()}


def max_difference(ours: ImageProcessor, ref: LlavaNextImageProcessorPil, data: list) -> float:
    diff = 0.0
    for image in data[:6]:
        a = ours([image]).pixels
        b = ref(images=[image], return_tensors="pt")["pixel_values"][0, : a.shape[0]]
        diff = max(diff, (a - b).abs().max().item())
    return diff


def run(n_images: int, repeats: int) -> str:
    data = images(n_images)
    rows = []
    for name, (tile, spec) in SETTINGS.items():
        pinpoints = [list(p) for p in anyres.parse_pinpoints(spec, tile)]
        ours = ImageProcessor(ImageConfig(size=tile, mode="anyres", grid_pinpoints=pinpoints))
        ref = LlavaNextImageProcessorPil(
            size={"shortest_edge": tile},
            crop_size={"height": tile, "width": tile},
            image_grid_pinpoints=pinpoints,
        )
        diff = max_difference(ours, ref, data)
        rates = measure(ours, ref, data, repeats)
        for label, suffix in [("1 image per call", ""), ("8 images per call", "-batch")]:
            f, t = rates["fovea" + suffix], rates["transformers" + suffix]
            rows.append([name, label, f"{t:.1f}", f"{f:.1f}", f"**{f / t:.2f}x**", f"{diff:.1e}"])
    header = ["setting", "calls", "transformers img/s", "fovea img/s", "speed-up", "max abs diff"]
    return table(header, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(run(args.images, args.repeats))
