"""Training throughput and memory on a LLaVA-NeXT-shaped mixture: fovea unpacked, packed, and packed
with DataLoader workers, against plain transformers LlavaNext with a minimal loop.

The mixture has LLaVA-NeXT's shape at a CPU's scale: image turns whose AnyRes visual tokens dwarf
their text (real: up to ~2,900 tokens at 2x2 with CLIP-L beside ~100 of text, fewer as unpadding
trims an image's aspect; here a 112 px CLIP tile of 64 tokens, up to 3x3 tiles plus the base view
with newlines, ~700 tokens at most, images of 100-448 px on each side so grids and unpadded rows
vary, one to three question-answer turns), beside short text-only turns (~30-50 tokens with the
template), 60% images and 40% text. The cost split is LLaVA-NeXT-7B's too: there the ViT-L tower
is ~4% of a step's FLOPs beside the 7B LM; here a CLIP of width 128 and 4 layers beside a Qwen2 of
width 512 and 6 layers. Every part trained with AdamW, the same batch size, seed and sample order
for every fovea row, each row in a fresh process (its own peak RSS).

The reference is what a user writes with transformers alone: its processor and chat template,
labels = input ids with padding masked, `model(**batch, labels=...)`, every batch padded to its
longest sample. fovea unpacked is today's loop; packed lays each batch's samples end to end
(data/packing.py), and the loss curves of the two are compared step by step. Reported: median
step time, samples/s and tokens/s after warm-up, peak RSS, and ratios.

    python benchmarks/train_throughput.py [--steps 50] [--batch 8] [--workers 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from common import save_random_llava_next, table

PINPOINTS = [
    [h, w] for h in (112, 224, 336) for w in (112, 224, 336)
]  # up to 3x3 tiles, as 336 px CLIP-L to 1008
WORDS = "red green blue yellow circle square triangle left right above below one two three what where".split()

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
records = json.load(open(f"{data}/mix.json"))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
def chat(r):
    out = []
    for i, turn in enumerate(r["conversations"]):
        text = turn["value"].replace("<image>\n", "")
        content = ([{"type": "image"}] if i == 0 and "image" in r else []) + [{"type": "text", "text": text}]
        out.append({"role": "user" if turn["from"] == "human" else "assistant", "content": content})
    return processor.apply_chat_template(out)
times, tokens = [], []
for step in range(steps):
    chunk = [records[(step * batch + i) % len(records)] for i in range(batch)]
    start = time.perf_counter()
    images = [Image.open(f"{data}/{r['image']}").convert("RGB") for r in chunk if "image" in r]
    inputs = processor(images=images or None, text=[chat(r) for r in chunk], padding=True, return_tensors="pt")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    optimizer.step(); optimizer.zero_grad()
    times.append(time.perf_counter() - start)
    tokens.append(int(inputs["attention_mask"].sum()))
print(json.dumps({"step": statistics.median(times[3:]), "tokens": statistics.median(tokens[3:]),
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "losses": []}))
"""

_FOVEA = r"""
import json, resource, statistics, sys
from fovea.threads import configure
configure()
from fovea.train.recipe import Recipe
from fovea.config import from_dict
from fovea.train.loop import train
ckpt, data, steps, batch, out, packing, workers = sys.argv[1:8]
steps, batch = int(steps), int(batch)
recipe = from_dict(Recipe, {
    "model": {"init": ckpt, "template": "qwen_1_5"},
    "stages": [{"name": "finetune", "data": f"{data}/mix.json", "max_steps": steps, "batch_size": batch,
                "packing": packing == "packed", "warmup_ratio": 0.0,
                "train": {"tower": 1e-4, "connector": 1e-4, "lm": 1e-4, "newline": 1e-4}}],
    "run": {"out_dir": out, "log_every": 1, "save_every": 10**9, "report_to": [], "progress": False,
            "num_workers": int(workers)},
})
train(recipe)
rows = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
warm = rows[3:]
print(json.dumps({"step": statistics.median(batch / r["samples_per_s"] for r in warm),
                  "tokens": statistics.median(r["tokens_per_s"] * batch / r["samples_per_s"] for r in warm),
                  "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "losses": [r["loss"] for r in rows]}))
"""


def make(directory: Path) -> None:
    vision = {"model_type": "clip_vision_model", "hidden_size": 128, "intermediate_size": 512,
              "num_hidden_layers": 4, "num_attention_heads": 4, "image_size": 112, "patch_size": 14}  # fmt: skip
    text = {"model_type": "qwen2", "vocab_size": 512, "hidden_size": 512, "intermediate_size": 1408,
            "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 2,
            "tie_word_embeddings": False}  # fmt: skip
    save_random_llava_next(directory, vision, text, PINPOINTS)
    from fovea.checkpoints.jinja import chat_template

    config = directory / "processor_config.json"
    proc = json.loads(config.read_text())
    proc["chat_template"] = chat_template("qwen_1_5")
    config.write_text(json.dumps(proc))


def mixture(directory: Path, n: int, seed: int = 0, largest: int = 448) -> None:
    """`n` records: 60% image turns (1-3 question-answer pairs over a synthetic image of any size
    up to `largest` px a side), 40% short text-only turns, shuffled."""
    from PIL import Image

    from fovea.data.synthetic import generate

    generate(directory, n, seed=seed, size=224, kinds=("colour", "shape", "count"))
    images = json.loads((directory / "qa.json").read_text())
    rng = random.Random(seed)
    for record in images:  # photos come in every aspect: AnyRes grids and unpadded rows vary with it
        path = directory / record["image"]
        low = largest * 100 // 448
        Image.open(path).resize((rng.randint(low, largest), rng.randint(low, largest))).save(path)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    records = []
    for i in range(n):
        if rng.random() < 0.6:
            base = images[i]
            turns = list(base["conversations"])
            for _ in range(rng.randint(0, 2)):
                turns += [
                    {"from": "human", "value": words(6) + "?"},
                    {"from": "gpt", "value": words(4) + "."},
                ]
            records.append({"id": base["id"], "image": base["image"], "conversations": turns})
        else:
            turns = [{"from": "human", "value": words(rng.randint(4, 14)) + "?"},
                     {"from": "gpt", "value": words(rng.randint(3, 12)) + "."}]  # fmt: skip
            records.append({"id": f"text-{i}", "conversations": turns})
    (directory / "mix.json").write_text(json.dumps(records))


def _run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"a benchmark process failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(steps: int, batch: int, workers: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make(tmp / "ckpt")
        mixture(tmp / "data", 400)
        common = [str(tmp / "ckpt"), str(tmp / "data"), str(steps), str(batch)]
        results = {"transformers (padded)": _run(_REFERENCE, *common)}
        for name, packing, n in [("fovea unpacked", "unpacked", 0), ("fovea packed", "packed", 0),
                                 (f"fovea packed + {workers} worker(s)", "packed", workers)]:  # fmt: skip
            results[name] = _run(_FOVEA, *common, str(tmp / name.replace(" ", "_")), packing, str(n))
    names = list(results)
    base, ref, best = results["fovea unpacked"], results["transformers (padded)"], results[names[-1]]
    rows = [[name, f"{r['step'] * 1e3:.0f}", f"{batch / r['step']:.2f}", f"{r['tokens'] / r['step']:.0f}",
             f"{r['peak'] / 2**30:.2f}", f"{base['step'] / r['step']:.2f}x", f"{r['peak'] / base['peak']:.2f}x"]
            for name, r in results.items()]  # fmt: skip
    drift = max(
        abs(a - b) / max(1.0, abs(b)) for a, b in zip(results["fovea packed"]["losses"], base["losses"])
    )
    lines = [
        table(
            [
                "loop",
                "step ms (median)",
                "samples/s",
                "real tokens/s",
                "peak RSS GiB",
                "samples/s vs fovea unpacked",
                "peak vs fovea unpacked",
            ],
            rows,
        ),  # fmt: skip
        "",
        f"loss curve, packed against unpacked, {len(base['losses'])} steps: largest relative difference {drift:.1e}",
        f"samples/s packed+workers over transformers: {ref['step'] / best['step']:.2f}",
        f"samples/s packed+workers over unpacked: {base['step'] / best['step']:.2f}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the last row")
    parser.add_argument("--quick", action="store_true", help="20 steps: the same comparison in a few minutes")
    args = parser.parse_args()
    print(run(20 if args.quick else args.steps, args.batch, args.workers))
