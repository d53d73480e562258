"""What a fuser costs per image, beside the tower that feeds it and the LM prefill it feeds.

At MMFuser's published size: CLIP ViT-L/14-336 (576 patches, width 1024, random weights), its
hidden states 3/8/13/18 as levels queried by 23, the fuser (16 heads, 4 points, 5.2M parameters),
against the tower's forward and against the prefill of the resulting 576 visual tokens + 64 text
tokens through an LM (Qwen2.5-0.5B's shape by default: a 7B does not fit this CPU's time budget).
Medians of alternating runs in one process; memory is each part's peak over what was live before
it (RSS on the CPU with freed blocks returned at once, allocated bytes on CUDA).

    python benchmarks/fuser.py [--repeats 3] [--views 1] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from fovea.connectors.fusers import FuserInput, build_fuser
from fovea.towers.base import VisionTower
from fovea.towers.presets import resolve_tower

from common import add_device_arguments, interleaved, peak_memory_mib, start, table

LAYERS = [3, 8, 13, 18, 23]  # MMFuser's -22/-17/-12/-7/-2 of CLIP-L's 25 hidden states


def lm(width: int, layers: int, device, dtype):
    config = AutoConfig.for_model(
        "qwen2", hidden_size=width, intermediate_size=width * 54 // 10, num_hidden_layers=layers,
        num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).to(device, dtype).eval()


def add_arguments(p) -> None:
    """What a fuser-cost benchmark takes: views per call, the LM's shape, device, dtype, repeats."""
    add_device_arguments(p, repeats=3)
    p.add_argument("--views", type=int, default=1, help="images (or AnyRes tiles) per call")
    p.add_argument("--lm-width", type=int, default=896)
    p.add_argument("--lm-layers", type=int, default=24)


def prefill(args, tokens: int, device, dtype):
    """(an LM of the benchmark's shape, its prefill input: `tokens` visual per view + 64 text)."""
    model = lm(args.lm_width, args.lm_layers, device, dtype)
    text = torch.randint(0, 1000, (1, 64), device=device)
    embeds = torch.cat([torch.randn(1, tokens * args.views, args.lm_width, device=device, dtype=dtype),
                        model.get_input_embeddings()(text)], dim=1)  # fmt: skip
    return model, embeds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    args, device, dtype = start(p)
    tower = VisionTower(resolve_tower("clip-vit-l14-336").tower_config()).to(device, dtype).eval()
    fuser = build_fuser({"type": "mmfuser"}, [tower.width] * len(LAYERS)).to(device, dtype).eval()
    with torch.no_grad():  # gammas off zero, so the attention runs and counts (it is gated at init)
        fuser.gamma1.fill_(0.5)
        fuser.gamma2.fill_(0.5)
    model, embeds = prefill(args, 576, device, dtype)
    pixels = torch.randn(args.views, 3, 336, 336, device=device, dtype=dtype)
    with torch.no_grad():
        states = tower(pixels).hidden_states
    layers = [states[i][:, 1:] for i in LAYERS]  # CLS dropped: (V, 576, 1024) each
    grid = tower.grid(336, 336)

    @torch.no_grad()
    def run_tower():
        tower(pixels)

    @torch.no_grad()
    def run_fuser():
        fuser(FuserInput(layers=layers, grids=[grid] * len(LAYERS)))

    @torch.no_grad()
    def run_prefill():
        model(inputs_embeds=embeds, logits_to_keep=1)

    runs = {"tower": run_tower, "fuser": run_fuser, "prefill": run_prefill}
    times = interleaved(runs, args.repeats)
    memory = peak_memory_mib(runs, args.device)
    params = {
        "tower": sum(p.numel() for p in tower.parameters()),
        "fuser": sum(p.numel() for p in fuser.parameters()),
        "prefill": sum(p.numel() for p in model.parameters()),
    }
    rows = [
        [
            name,
            f"{params[name] / 1e6:.1f}M",
            f"{t * 1000 / args.views:.1f}",
            f"{t / times['fuser']:.1f}x",
            memory[name],
        ]
        for name, t in times.items()
    ]
    print(f"{args.views} view(s), {args.device} {args.dtype}, median of {args.repeats}")
    print(table(["part", "parameters", "ms per view", "time / fuser's", "peak MiB over live"], rows))
    print(f"\nthe fuser adds {times['fuser'] / (times['tower'] + times['prefill']):.1%} to tower + prefill")


if __name__ == "__main__":
    main()
