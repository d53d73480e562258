"""Prefill: fovea vs transformers' LlavaNextForConditionalGeneration on the same weights.

A random LlavaNext checkpoint (CLIP tower at 336 px with AnyRes, Qwen2 LM with Qwen2.5's
151,936-token vocabulary) is saved by transformers, then loaded by both. Two measurements, each
the median of alternating runs in one process:

* forward: prepared inputs -> logits at every position (the model alone);
* prefill: image + prompt -> next-token logits (preprocessing + model; both sides ask for the last
  position only, as generation does).

    python benchmarks/prefill.py [--repeats 5] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

import fovea

from common import interleaved, qwen2_config, save_random_llava_next, table

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def make_checkpoint(directory: Path, lm_layers: int, tower_layers: int) -> None:
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": tower_layers,
        "num_attention_heads": 8,
        "image_size": 336,
        "patch_size": 14,
    }
    save_random_llava_next(directory, vision, qwen2_config(lm_layers), PINPOINTS)


def run(repeats: int, device: str, dtype: torch.dtype, lm_layers: int, tower_layers: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        make_checkpoint(Path(tmp), lm_layers, tower_layers)
        hf = LlavaNextForConditionalGeneration.from_pretrained(tmp, dtype=dtype).to(device).eval()
        processor = LlavaNextProcessor.from_pretrained(tmp)
        ours = fovea.load(tmp, dtype=dtype, device=device)
    image = Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype("uint8"))
    text = "<image>\nDescribe the picture in detail."
    ref_in = processor(images=[image], text=text, return_tensors="pt").to(device)
    ref_in["pixel_values"] = ref_in["pixel_values"].to(dtype)
    our_in = ours.prepare(text, images=[image])
    our_in = {
        **our_in,
        "input_ids": our_in["input_ids"].to(device),
        "attention_mask": our_in["attention_mask"].to(device),
    }

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.inference_mode()
    def hf_forward():
        out = hf(**ref_in).logits
        sync()
        return out

    @torch.inference_mode()
    def fovea_forward():
        out = ours(**our_in).logits
        sync()
        return out

    @torch.inference_mode()
    def hf_prefill():
        inputs = processor(images=[image], text=text, return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        out = hf(**inputs, logits_to_keep=1).logits
        sync()
        return out

    @torch.inference_mode()
    def fovea_prefill():
        inputs = ours.prepare(text, images=[image])
        ids, mask = inputs["input_ids"].to(device), inputs["attention_mask"].to(device)
        out = ours(ids, mask, inputs["pixel_values"], inputs["image_layouts"], logits_to_keep=1).logits
        sync()
        return out

    with torch.inference_mode():
        diff = (hf(**ref_in).logits[0, -1].float() - ours(**our_in).logits[0, -1].float()).abs().max().item()
    t = interleaved(
        {"hf_fwd": hf_forward, "f_fwd": fovea_forward, "hf_pre": hf_prefill, "f_pre": fovea_prefill}, repeats
    )
    seq = our_in["input_ids"].shape[1]
    rows = [
        [
            "forward (all logits)",
            seq,
            f"{t['hf_fwd'] * 1e3:.0f}",
            f"{t['f_fwd'] * 1e3:.0f}",
            f"**{t['hf_fwd'] / t['f_fwd']:.2f}x**",
        ],
        [
            "prefill (image+text -> next token)",
            seq,
            f"{t['hf_pre'] * 1e3:.0f}",
            f"{t['f_pre'] * 1e3:.0f}",
            f"**{t['hf_pre'] / t['f_pre']:.2f}x**",
        ],
    ]
    head = ["measure", "tokens", "transformers ms", "fovea ms", "fovea speed-up"]
    return table(head, rows) + f"\n\nlast-position logits max abs diff: {diff:.1e} ({dtype}, {device})"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--lm-layers", type=int, default=4)
    parser.add_argument("--tower-layers", type=int, default=8)
    args = parser.parse_args()
    print(run(args.repeats, args.device, getattr(torch, args.dtype), args.lm_layers, args.tower_layers))
