"""Training throughput and memory: fovea's loop vs plain transformers LlavaNext + a minimal loop.

One random LlavaNext checkpoint (CLIP tower at 56 px with AnyRes over 3 pinpoints, a Qwen2 LM)
and one synthetic image-QA set; both sides train every part with AdamW at the same batch size
for the same number of steps, each in a fresh process (so peak RSS is its own). The reference
side is what a user writes with transformers alone: its processor and chat template, labels
= input ids with padding masked, `model(**batch, labels=...)`. Reported: median step time,
samples/s and tokens/s over the steps after warm-up, and peak RSS, as ratios.

    python benchmarks/train_throughput.py [--steps 30] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import save_random_llava_next, table

PINPOINTS = [[56, 56], [56, 112], [112, 56]]

_REFERENCE = r"""
import json, resource, statistics, sys, time
import torch
from PIL import Image
from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor
ckpt, data, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = LlavaNextForConditionalGeneration.from_pretrained(ckpt).train()
processor = LlavaNextProcessor.from_pretrained(ckpt)
processor.tokenizer.padding_side = "right"
records = json.load(open(f"{data}/qa.json"))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
times, tokens = [], []
for step in range(steps):
    chunk = [records[(step * batch + i) % len(records)] for i in range(batch)]
    start = time.perf_counter()
    texts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["conversations"][0]["value"].split(chr(10))[-1]}]},
                                            {"role": "assistant", "content": [{"type": "text", "text": r["answer"]}]}]) for r in chunk]
    images = [Image.open(f"{data}/{r['image']}").convert("RGB") for r in chunk]
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    optimizer.step(); optimizer.zero_grad()
    times.append(time.perf_counter() - start)
    tokens.append(int(inputs["attention_mask"].sum()))
warm = times[3:]
print(json.dumps({"step": statistics.median(warm), "tokens": statistics.median(tokens[3:]),
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

_FOVEA = r"""
import json, resource, statistics, sys
from fovea.train.recipe import Recipe
from fovea.config import from_dict
from fovea.train.loop import train
ckpt, data, steps, batch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
recipe = from_dict(Recipe, {
    "model": {"init": ckpt, "template": "qwen_1_5"},
    "stages": [{"name": "finetune", "data": f"{data}/qa.json", "max_steps": steps, "batch_size": batch,
                "train": {"tower": 1e-4, "connector": 1e-4, "lm": 1e-4, "newline": 1e-4}, "warmup_ratio": 0.0}],
    "run": {"out_dir": out, "log_every": 1, "save_every": 10**9, "report_to": [], "progress": False},
})
train(recipe)
rows = [json.loads(l) for l in open(f"{out}/metrics.jsonl")][3:]
step = statistics.median(batch / r["samples_per_s"] for r in rows)
tokens = statistics.median(r["tokens_per_s"] * batch / r["samples_per_s"] for r in rows)
print(json.dumps({"step": step, "tokens": tokens, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def make(directory: Path) -> None:
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "image_size": 56,
        "patch_size": 14,
    }
    text = {
        "model_type": "qwen2",
        "vocab_size": 512,
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    }
    save_random_llava_next(directory, vision, text, PINPOINTS)
    from fovea.checkpoints.jinja import chat_template
    from fovea.tiny import tiny_tokenizer

    tokenizer_config = directory / "processor_config.json"
    proc = json.loads(tokenizer_config.read_text())
    proc["chat_template"] = chat_template("qwen_1_5")
    tokenizer_config.write_text(json.dumps(proc))
    assert tiny_tokenizer  # the checkpoint carries fovea's tiny tokenizer (saved with the processor)


def run(steps: int, batch: int) -> str:
    from fovea.data.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make(tmp / "ckpt")
        generate(tmp / "data", 400, seed=0, kinds=("colour", "shape", "count"))
        results = {}
        for name, code, extra in [("transformers", _REFERENCE, []), ("fovea", _FOVEA, [str(tmp / "run")])]:
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    code,
                    str(tmp / "ckpt"),
                    str(tmp / "data"),
                    str(steps),
                    str(batch),
                    *extra,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    ref, ours = results["transformers"], results["fovea"]
    rows = []
    for name, r in results.items():
        rows.append(
            [
                name,
                f"{r['step'] * 1e3:.0f}",
                f"{batch / r['step']:.1f}",
                f"{r['tokens'] / r['step']:.0f}",
                f"{r['peak'] / 2**30:.2f}",
            ]
        )
    ratio = ref["step"] / ours["step"]
    rows.append(
        [
            "fovea / transformers",
            f"{1 / ratio:.2f}x time",
            f"**{ratio:.2f}x**",
            "",
            f"{ours['peak'] / ref['peak']:.2f}x",
        ]
    )
    return table(["loop", "step ms (median)", "samples/s", "tokens/s", "peak RSS GiB"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    print(run(args.steps, args.batch))
