"""OpenEQA-style input, pooled against unpooled: 32 frames at MLCD-L-336's geometry.

MLCD-Embodied runs a sample of more than 8 images as pooled one-frame videos (2x2 bilinear after
the projector, a newline after each pooled row: 156 tokens a frame); before fovea had the rule it
fed OpenEQA's 32 frames as 32 padded images of 577 tokens. This script builds one random model at
MLCD-L-336's geometry (CLIP layout, width 1024, patch 14, 336 px; `--tower-layers` of its 24 layers)
with a Qwen2.5-0.5B-shaped LM (`--lm-layers` of its 24), and reports for one 32-frame prompt:

* the visual and whole-prompt token counts of each way (exact, from the geometry);
* prefill time (tower, connector and LM over the whole prompt, last position's logits), the
  median of `--repeats` alternating runs, and the ratio.

Layers are cut so that a 2-core CPU finishes: the token counts do not depend on them, the tower
costs the same both ways, and the LM's share (which pooling cuts) grows with its depth, so the
full model's ratio is larger than the one measured here.

    python benchmarks/frames_prefill.py [--frames 32] [--repeats 3] [--tower-layers 4] [--lm-layers 4]
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
from PIL import Image

from common import interleaved, qwen2_config, table


def build(tower_layers: int, lm_layers: int):
    from fovea.connectors.connector import ConnectorConfig
    from fovea.imaging.processor import ImageConfig
    from fovea.model.config import VLMConfig
    from fovea.model.vlm import VisionLanguageModel
    from fovea.tiny_tokenizers import tiny_tokenizer
    from fovea.towers.presets import resolve_tower

    preset = resolve_tower("mlcd-vit-l14-336")
    tower = preset.tower_config()
    tower.hf_config = {**tower.hf_config, "num_hidden_layers": tower_layers}
    tower.weights = None
    tokenizer = tiny_tokenizer()
    lm = {**qwen2_config(lm_layers), "vocab_size": len(tokenizer)}
    image = ImageConfig(
        **preset.image, mode="anyres", grid_pinpoints="(1x1),...,(6x6)", multi_image_mode="pad"
    )
    config = VLMConfig(
        tower=tower,
        connector=ConnectorConfig(layers=[-2], projector="mlp2x_gelu"),
        lm=lm,
        image=image,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        template="qwen_1_5",
    )
    return VisionLanguageModel(config, tokenizer).eval()


def run(frames: int, repeats: int, tower_layers: int, lm_layers: int) -> str:
    torch.manual_seed(0)
    pooled = build(tower_layers, lm_layers)
    unpooled = copy.copy(pooled)  # the same weights; only the many-images rule differs
    unpooled.config = copy.deepcopy(pooled.config)
    unpooled.config.image.frames_above = None
    from fovea.imaging.processor import ImageProcessor

    unpooled.processor = ImageProcessor(unpooled.config.image)
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((480, 640, 3)) * 255).astype("uint8")) for _ in range(frames)]
    text = (
        "".join(f"Image {i + 1}:\n<image>\n" for i in range(frames))
        + "What is on the table?\nYour answer is:"
    )
    inputs = {
        name: m.prepare(text, images=images, template="qwen_1_5")
        for name, m in (("pooled", pooled), ("unpooled", unpooled))
    }
    models = {"pooled": pooled, "unpooled": unpooled}

    def prefill(name):
        with torch.inference_mode():
            return models[name](**inputs[name], logits_to_keep=1).logits

    times = interleaved({name: (lambda n=name: prefill(n)) for name in models}, repeats)
    rows = []
    for name, model in models.items():
        visual = sum(model.num_image_tokens(layout) for layout in inputs[name]["image_layouts"])
        rows.append([name, visual, inputs[name]["input_ids"].shape[1], f"{times[name]:.2f}"])
    ratio = times["unpooled"] / times["pooled"]
    head = ["frames as", "visual tokens", "prompt tokens", "prefill s (median)"]
    return (
        table(head, rows)
        + f"\n\nunpooled / pooled prefill: **{ratio:.2f}x** ({frames} frames, tower {tower_layers} and LM {lm_layers} layers)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tower-layers", type=int, default=4)
    parser.add_argument("--lm-layers", type=int, default=4)
    args = parser.parse_args()
    print(run(args.frames, args.repeats, args.tower_layers, args.lm_layers))
