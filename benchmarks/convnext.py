"""ConvLLaVA's trade, measured: tokens and tower cost per image, ConvNeXt with a fifth stage against
CLIP ViT-L/14-336 with AnyRes tiles, on square images of the same side, side by side in one run.

For each side R (768, 1024, 1536 px): ConvLLaVA's five-stage ConvNeXt-L on one R x R view (its
`pad` mode: (R/64)^2 tokens), and CLIP-L/14-336 in LLaVA-NeXT's AnyRes with a k x k grid of 336 px
tiles, k = round(R / 336), plus the base view (the tokens fovea's packing gives them, newlines
included). Random weights (the cost does not depend on them); medians of alternating runs; memory
is each tower call's peak over what was live (RSS on the CPU, allocated bytes on CUDA).

    python benchmarks/convnext.py [--sides 768 1024 1536] [--repeats 1] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse

import torch

from fovea.imaging.processor import ImageLayout
from fovea.model.packing import count_tokens
from fovea.towers.base import VisionTower
from fovea.towers.presets import resolve_tower

from common import add_device_arguments, interleaved, peak_memory_mib, start, table


def tower(name: str, device, dtype) -> VisionTower:
    return VisionTower(resolve_tower(name).tower_config()).to(device, dtype).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sides", type=int, nargs="+", default=[768, 1024, 1536])
    add_device_arguments(p, repeats=1)
    args, device, dtype = start(p)
    convnext, clip = tower("convllava-convnext-768", device, dtype), tower("clip-vit-l14-336", device, dtype)
    rows = []
    for side in args.sides:
        k = max(1, round(side / 336))
        square = torch.randn(1, 3, side, side, device=device, dtype=dtype)
        tiles = torch.randn(1 + k * k, 3, 336, 336, device=device, dtype=dtype)
        runs = {
            "convnext": torch.no_grad()(lambda square=square: convnext(square)),
            "clip": torch.no_grad()(lambda tiles=tiles: clip(tiles, depth=clip.num_layers - 1)),
        }
        times = interleaved(runs, args.repeats)
        memory = peak_memory_mib(runs, args.device)
        grid = convnext.feature_levels()[-1].grid(side, side)
        anyres = count_tokens(ImageLayout((side, side), "anyres", (k, k)), (24, 24), 0, "spatial_unpad", True)
        rows.append([side, f"{grid[0] * grid[1]}", f"{k}x{k} tiles + base ({336 * k} px)", anyres,
                     f"{anyres / (grid[0] * grid[1]):.1f}x", f"{times['convnext'] * 1000:.0f}", f"{times['clip'] * 1000:.0f}",
                     f"{times['clip'] / times['convnext']:.2f}x", memory["convnext"], memory["clip"]])  # fmt: skip
    print(
        f"{args.device} {args.dtype}, median of {args.repeats}; CLIP runs to layer -2 as LLaVA-NeXT reads it"
    )
    print(table(["side", "ConvNeXt tokens", "CLIP-L AnyRes", "CLIP tokens", "tokens / ConvNeXt's",
                 "ConvNeXt ms", "CLIP ms", "time / ConvNeXt's", "ConvNeXt peak MiB", "CLIP peak MiB"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
