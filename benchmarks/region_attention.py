"""What RICE's region attention costs on top of a plain ViT training step (issue 25).

A random ViT at ViT-L/14 size (24 layers, width 1024, 16 heads; CLIP layout) runs a training step
(forward and backward of a mean of its pooled output) on a batch of `--batch` images at `--size`
px, alone and with fovea's region layers (`pretrain/regions.py`: `--layers` cross-attention
blocks, `--regions` queries per image over the last layer's patch tokens). Reported: the median
step of each over `--repeats` alternating runs, and the ratio. The region layers read the patch
tokens and update only N queries, so their cost grows with N x tokens, not tokens squared.

    python benchmarks/region_attention.py [--batch 2] [--size 224] [--regions 10] [--layers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch

from common import interleaved, table


def run(batch: int, size: int, regions: int, layers: int, repeats: int) -> str:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from fovea.pretrain.regions import RegionConfig, RegionLayers, box_visibility

    torch.manual_seed(0)
    vit = CLIPVisionModel(
        CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                         num_attention_heads=16, image_size=size, patch_size=14)
    ).train()  # fmt: skip
    region = RegionLayers(RegionConfig(layers=layers, regions=regions), width=1024, heads=16).train()
    pixels = torch.randn(batch, 3, size, size)
    grid = (size // 14, size // 14)
    boxes = torch.tensor([[i * 8, i * 8, size - i * 8, size - i * 4] for i in range(regions)])
    visible = box_visibility(boxes, (size, size), grid)[None].expand(batch, -1, -1)

    def plain():
        vit.zero_grad(set_to_none=True)
        vit(pixel_values=pixels).pooler_output.mean().backward()

    def with_regions():
        vit.zero_grad(set_to_none=True)
        region.zero_grad(set_to_none=True)
        out = vit(pixel_values=pixels)
        embeddings = region(out.last_hidden_state[:, 1:], visible)
        (out.pooler_output.mean() + embeddings.mean()).backward()

    times = interleaved(
        {"plain ViT step": plain, f"+ {layers} region layers, N = {regions}": with_regions}, repeats
    )
    names = list(times)
    rows = [[name, f"{seconds:.3f}"] for name, seconds in times.items()]
    ratio = times[names[1]] / times[names[0]]
    params = sum(p.numel() for p in region.parameters()) / 1e6
    return (
        table(["step", "seconds (median)"], rows)
        + f"\n\nregion layers / plain: **{ratio:.3f}x** ({batch} images of {size} px, {grid[0] * grid[1]} patch "
        f"tokens; region layers {params:.1f}M parameters)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--regions", type=int, default=10)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(run(args.batch, args.size, args.regions, args.layers, args.repeats))
