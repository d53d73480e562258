"""Peak memory of loading a multi-GB checkpoint: fovea.load vs transformers' from_pretrained.

Makes a random LlavaNext checkpoint of >= 500M parameters (CLIP ViT-L/14-336 tower + a Qwen2 LM
with Qwen2.5's vocabulary, fp32, sharded by transformers), then loads it in fresh processes, one
per loader, and reports each process's peak RSS (ru_maxrss) against the checkpoint's size, both
in total and above the process's RSS right after its imports.

    python benchmarks/load_memory.py [--lm-layers 8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import qwen2_config, save_random_llava_next, table

_CHILD = r"""
import json, resource, sys, psutil
import torch, transformers, fovea
base = psutil.Process().memory_info().rss
if sys.argv[2] == "fovea":
    model = fovea.load(sys.argv[1])
else:
    model = transformers.LlavaNextForConditionalGeneration.from_pretrained(sys.argv[1])
params = sum(p.numel() for p in model.parameters())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"base": base, "peak": peak, "params": params}))
"""


def make_checkpoint(directory: Path, lm_layers: int) -> None:
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
    }
    pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    save_random_llava_next(directory, vision, qwen2_config(lm_layers), pinpoints, shard="1GB")


def measure(directory: Path, loader: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(directory), loader], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(directory: Path) -> str:
    size = sum(f.stat().st_size for f in directory.glob("*.safetensors"))
    rows = []
    for loader in ["transformers", "fovea"]:
        m = measure(directory, loader)
        rows.append(
            [
                loader,
                f"{m['params'] / 1e6:.0f}M",
                f"{size / 2**30:.2f}",
                f"{m['peak'] / 2**30:.2f}",
                f"**{m['peak'] / size:.2f}x**",
                f"{(m['peak'] - m['base']) / size:.2f}x",
            ]
        )
    head = [
        "loader",
        "params",
        "checkpoint GiB",
        "peak RSS GiB",
        "peak / checkpoint",
        "(peak - after imports) / checkpoint",
    ]
    return table(head, rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lm-layers", type=int, default=8)
    parser.add_argument("--keep", type=Path, help="make (or reuse) the checkpoint in this directory")
    args = parser.parse_args()
    if args.keep:
        if not (args.keep / "config.json").is_file():
            make_checkpoint(args.keep, args.lm_layers)
        print(run(args.keep))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            make_checkpoint(Path(tmp), args.lm_layers)
            print(run(Path(tmp)))
