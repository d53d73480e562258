"""Generation speed: fovea's engine vs transformers' LlavaNextForConditionalGeneration.generate.

The same random LlavaNext weights (CLIP tower at 336 px with AnyRes, a Qwen2 LM with Qwen2.5's
151,936-token vocabulary), one 400x300 image and a short question per sequence, greedy, batch 1
and 8. Both sides are timed the same way: a timestamp at every generated token (transformers:
a StoppingCriteria called once per step; fovea: the engine's step trace), from raw images on.
Time to first token = first timestamp; decode tokens/s = batch x (N-1) tokens between the first
and the last timestamp. Sides alternate; medians over repeats.

    python benchmarks/generation.py [--new-tokens 32] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import qwen2_config, save_random_llava_next, table

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def _hf(hf, processor, images, text, new_tokens) -> tuple[float, float]:
    """(time to first token, decode tokens/s) from raw images, transformers' generate."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    steps: list[float] = []

    class Clock(StoppingCriteria):  # called once per generated token: a timestamp per step
        def __call__(self, input_ids, scores, **kwargs):
            steps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    start = time.perf_counter()
    inputs = processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
    hf.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        stopping_criteria=StoppingCriteriaList([Clock()]),
    )
    return steps[0] - start, len(images) * (len(steps) - 1) / (steps[-1] - steps[0])


def _fovea(engine, images, question, new_tokens) -> tuple[float, float]:
    """(time to first token, decode tokens/s) from raw images, fovea's engine."""
    from fovea.infer.engine import Request

    done, lock, remaining = threading.Event(), threading.Lock(), [len(images)]

    def emit(kind, value):
        if kind in ("done", "error"):
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()

    engine.trace = []
    start = time.perf_counter()
    for image in images:
        engine.submit(
            Request(
                [{"role": "user", "content": question}],
                [image],
                max_tokens=new_tokens,
                temperature=0,
                ignore_eos=True,
                emit=emit,
            )
        )
    done.wait()
    steps, engine.trace = engine.trace, None
    return steps[0] - start, len(images) * (len(steps) - 1) / (steps[-1] - steps[0])


def run(new_tokens: int, repeats: int, device: str) -> str:
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    import fovea
    from fovea.infer.engine import Engine

    with tempfile.TemporaryDirectory() as tmp:
        vision = {
            "model_type": "clip_vision_model",
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 8,
            "num_attention_heads": 8,
            "image_size": 336,
            "patch_size": 14,
        }
        save_random_llava_next(Path(tmp), vision, qwen2_config(4), PINPOINTS)
        hf = LlavaNextForConditionalGeneration.from_pretrained(tmp).to(device).eval()
        processor = LlavaNextProcessor.from_pretrained(tmp)
        processor.tokenizer.padding_side = "left"
        ours = fovea.load(tmp, device=device)
    ours.config.template = "qwen_1_5"
    engine = Engine(ours, max_batch=8)  # the server default: 10 ms to gather a batch
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((300, 400, 3)) * 255).astype("uint8"))
    question = "Describe the picture."
    text = ours.render_prompt(question, 1, "qwen_1_5")
    rows = []
    with torch.inference_mode():
        for batch in (1, 8):
            images = [image] * batch
            runs = {"transformers": [], "fovea": []}
            for _ in range(repeats):  # alternate the sides so machine noise hits both
                runs["transformers"].append(_hf(hf, processor, images, text, new_tokens))
                runs["fovea"].append(_fovea(engine, images, question, new_tokens))
            for name, timed in runs.items():
                first = statistics.median(t for t, _ in timed)
                rate = statistics.median(r for _, r in timed)
                rows.append([batch, name, f"{first * 1e3:.0f}", f"{rate:.1f}"])
            h, f = rows[-2], rows[-1]
            rows.append(
                [
                    batch,
                    "fovea / transformers",
                    f"**{float(h[2]) / float(f[2]):.2f}x faster**",
                    f"**{float(f[3]) / float(h[3]):.2f}x**",
                ]
            )
    engine.close()
    return table(["batch", "side", "time to first token ms", "decode tokens/s"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(run(args.new_tokens, args.repeats, args.device))
