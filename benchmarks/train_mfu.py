"""Training tokens/s and MFU of fovea's loop for a LLaVA-NeXT-7B-shaped model with random weights.

The model has LLaVA-NeXT-7B's shapes: a CLIP ViT-L/14 tower at 336 px (width 1024, 24 layers, 577
tokens a view), AnyRes up to 2x2 tiles plus the base view, an MLP projector, and Qwen2-7B's widths
(hidden 3584, 28 query and 4 key-value heads, MLP 18944, vocabulary 152064). Full finetuning with
AdamW needs ~16 bytes a parameter, so one 80 GB GPU holds 8 of the LM's 28 layers (`--layers`); MFU
is a per-layer figure, so the fraction is what a 28-layer run gets per GPU once sharded. The data is
the LLaVA-NeXT-shaped mixture of `train_throughput.py` at 336 px tiles. bf16 autocast, packing,
gradient checkpointing per block; `--compile` compiles every tower and LM block.

Model FLOPs (counted, not measured) for one sample, forward; training is 3x (backward twice):
    tower: views x 577 x [2 x (4 h^2 + 2 h f) + 4 x 577 x h] per layer  (full attention)
    projector: visual tokens x 2 x (1024 x d + d x d)
    LM, per token: 2 x (2 d^2 + 2 d kv + 3 d F) per layer + 4 x s x d per layer (s: the tokens the
    token attends to, causal within its sample) + 2 x d x V (the head)
MFU = model FLOPs per second / the GPU's dense bf16 peak (H100 and H200 SXM: 989 TFLOP/s).

    python benchmarks/train_mfu.py [--steps 20] [--batch 8] [--layers 8] [--compile]
    python benchmarks/train_mfu.py --tiny        # the same path at a CPU's scale: checks the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

PEAK_BF16 = 989e12
VIEW_TOKENS = 577


def shapes(tiny: bool, layers: int) -> tuple[dict, dict, int]:
    """(tower config, LM config, tile size)."""
    if tiny:
        tower = {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "image_size": 56, "patch_size": 14, "hidden_act": "quick_gelu"}  # fmt: skip
        lm = {"model_type": "qwen2", "vocab_size": 1024, "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False}  # fmt: skip
        return tower, lm, 56
    tower = {"model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
             "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "hidden_act": "quick_gelu"}  # fmt: skip
    lm = {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
          "num_hidden_layers": layers, "num_attention_heads": 28, "num_key_value_heads": 4,
          "max_position_embeddings": 32768, "rope_theta": 1e6, "tie_word_embeddings": False}  # fmt: skip
    return tower, lm, 336


def model_flops(tower: dict, lm: dict, views: int, lengths: list[int]) -> float:
    """Training FLOPs (3x forward) of one step: `views` tower views, samples of `lengths` tokens."""
    h, f, n = (
        tower["hidden_size"],
        tower["intermediate_size"],
        (tower["image_size"] // tower["patch_size"]) ** 2 + 1,
    )
    tower_flops = views * n * tower["num_hidden_layers"] * (2 * (4 * h * h + 2 * h * f) + 4 * n * h)
    d, big, layers = lm["hidden_size"], lm["intermediate_size"], lm["num_hidden_layers"]
    kv = d // lm["num_attention_heads"] * lm["num_key_value_heads"]
    projector = views * (n - 1) * 2 * (h * d + d * d)
    per_token = layers * 2 * (2 * d * d + 2 * d * kv + 3 * d * big) + 2 * d * lm["vocab_size"]
    attention = sum(layers * 4 * d * (length + 1) / 2 * length for length in lengths)  # causal, per sample
    return 3 * (tower_flops + projector + per_token * sum(lengths) + attention)


def run(args) -> str:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    import torch

    from fovea.config import from_dict
    from fovea.threads import configure
    from fovea.train.loop import train
    from fovea.train.recipe import Recipe
    from train_throughput import mixture

    configure()
    tower, lm, tile = shapes(args.tiny, args.layers)
    pinpoints = [[tile * a, tile * b] for a in (1, 2) for b in (1, 2)]
    gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        mixture(data, max(64, args.batch * (args.steps + 4)), largest=tile * 4 // 3)
        recipe = from_dict(Recipe, {
            "model": {"tower_config": tower, "lm_config": lm, "tokenizer_corpus": ["red green blue circle square"],
                      "connector": {"layers": [-2], "projector": "mlp2x_gelu"}, "template": "qwen_1_5",
                      "image": {"mode": "anyres", "grid_pinpoints": pinpoints}, "gradient_checkpointing": True,
                      "compile": args.compile, "max_length": 8192},
            "stages": [{"name": "finetune", "data": str(data / "mix.json"), "max_steps": args.steps,
                        "batch_size": args.batch, "warmup_ratio": 0.0,
                        "train": {"tower": 2e-6, "connector": 1e-5, "lm": 1e-5, "newline": 1e-5}}],
            "run": {"out_dir": str(Path(tmp) / "run"), "log_every": 1, "save_every": 10**9, "report_to": [],
                    "progress": False, "precision": "bf16" if gpu else "no"},
        })  # fmt: skip
        train(recipe)
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()][
            3:
        ]
    seconds = statistics.median(args.batch / r["samples_per_s"] for r in rows)
    tokens = statistics.median(r["tokens_per_s"] for r in rows)
    per_sample = tokens * seconds / args.batch
    views = round(0.6 * args.batch * 4)  # 60% image turns, ~4 views each after AnyRes
    flops = model_flops(tower, lm, views, [int(per_sample)] * args.batch)
    device = torch.cuda.get_device_name() if gpu else "CPU (no peak: MFU not meaningful)"
    mfu = flops / seconds / PEAK_BF16 if gpu else float("nan")
    return (
        f"device: {device}\nLM layers: {lm['num_hidden_layers']}, batch {args.batch}, {len(rows)} steps after warm-up\n"
        f"step: {seconds:.3f} s (median), tokens/s: {tokens:,.0f}, model TFLOP a step: {flops / 1e12:.1f}\n"
        f"MFU: {mfu:.1%}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--layers", type=int, default=8, help="LM layers of Qwen2-7B's 28 (AdamW must fit)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every tower and LM block")
    parser.add_argument(
        "--tiny", action="store_true", help="CPU-sized shapes: checks the script, not a figure"
    )
    print(run(parser.parse_args()))
