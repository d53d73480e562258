"""What vMLLM's fuser costs per image, text tower included, beside the tower and the LM prefill.

At vMLLM's SigLIP-SO400M/14-384 size (random weights): the tower without its last block (26 blocks,
27 hidden states of 729 x 1152, all of which the fuser reads), the fuser (two layer attentions,
two gates, SigLIP-SO's 27-layer text tower on a 16-word question), against the tower's forward and
the prefill of the 729 visual + 64 text tokens through an LM (Qwen2.5-0.5B's shape by default).
Memory: each part's peak over what was live before it, and the hidden states the fuser keeps.
Medians of alternating runs in one process.

    python benchmarks/vmllm.py [--repeats 3] [--views 1] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse

import torch

from fovea.connectors.fusers import FuserInput, build_fuser
from fovea.connectors.vmllm import KNOWN_TEXT_TOWERS
from fovea.tiny import tiny_text_tower
from fovea.towers.base import VisionTower
from fovea.towers.presets import resolve_tower
from fuser import add_arguments, prefill

from common import interleaved, peak_memory_mib, start, table

QUESTION = "<image>\nWhat is written on the small red sign to the left of the door, and what colour is it?"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    args, device, dtype = start(p)
    config = resolve_tower("siglip-so400m-384").tower_config()
    tower = VisionTower(config).to(device, dtype).eval()
    depth = tower.num_layers - 1  # the original deletes the last block
    text = KNOWN_TEXT_TOWERS["google/siglip-so400m-patch14-384"]["text_tower"]
    fuser = build_fuser({"type": "vmllm", "text_tower": text}, [tower.width] * (depth + 2))
    fuser = fuser.to(device, dtype).eval()
    fuser.tokenizer = tiny_text_tower("siglip_text_model")[1]  # the tokenizer only sets the length
    pixels = torch.randn(args.views, 3, 384, 384, device=device, dtype=dtype)
    with torch.no_grad():
        states = tower(pixels, depth=depth).hidden_states
    layers = [*states, states[-1]]  # all 27 aggregated, then the selected one
    grid = tower.grid(384, 384)
    inputs = FuserInput(layers=layers, grids=[grid] * len(layers), samples=torch.zeros(args.views, dtype=torch.long),
                        questions=[QUESTION])  # fmt: skip
    tokens = grid[0] * grid[1]
    model, embeds = prefill(args, tokens, device, dtype)
    runs = {
        "tower": torch.no_grad()(lambda: tower(pixels, depth=depth)),
        "fuser": torch.no_grad()(lambda: fuser(inputs)),
        "text tower alone": torch.no_grad()(lambda: fuser.encode_questions([QUESTION])),
        "prefill": torch.no_grad()(lambda: model(inputs_embeds=embeds, logits_to_keep=1)),
    }
    times = interleaved(runs, args.repeats)
    memory = peak_memory_mib(runs, args.device)
    params = {
        "tower": sum(p.numel() for p in tower.parameters()),
        "fuser": sum(p.numel() for p in fuser.parameters()),
        "text tower alone": sum(p.numel() for p in fuser.text.parameters()),
        "prefill": sum(p.numel() for p in model.parameters()),
    }
    rows = [[name, f"{params[name] / 1e6:.1f}M", f"{t * 1000 / args.views:.1f}", f"{t / times['fuser']:.2f}x",
             memory[name]] for name, t in times.items()]  # fmt: skip
    kept = sum(s.numel() * s.element_size() for s in states) / args.views / 2**20
    print(f"{args.views} view(s), {args.device} {args.dtype}, median of {args.repeats}")
    print(table(["part", "parameters", "ms per view", "time / fuser's", "peak MiB over live"], rows))
    print(
        f"\nhidden states the fuser reads: {len(states)} x {tokens} x {tower.width} = {kept:.0f} MiB per view"
    )
    print(f"the fuser adds {times['fuser'] / (times['tower'] + times['prefill']):.1%} to tower + prefill")


if __name__ == "__main__":
    main()
