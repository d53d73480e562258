"""One MLCD-Seg segmentation at full size, computed from the shapes: weights, FLOPs, peak memory.

MLCD-Seg-7B = Qwen2.5-7B-Instruct + MLCD ViT-L/14-336 (AnyRes up to 2x2 + base view) + SAM ViT-H.
Parameter counts are exact: each part is built on the meta device from its config (transformers'
Qwen2, CLIP vision and SAM classes) and counted. FLOPs are written out below (2 per multiply-add):

* a dense layer of p weights applied to n tokens: 2·p·n;
* attention over n queries and m keys of width d: 2·n·m·d for QK^T and again for AV;
* SAM-H's image encoder: 32 blocks over 64 x 64 = 4,096 tokens of width 1280, of which 28 attend
  within 14 x 14 windows (the grid padded to 70 x 70: 25 windows of 196 tokens) and 4 globally;
* the mask decoder and prompt encoder are under 0.1% of the total and counted by their weights.

One `segment` call = the answer's prefill and decode, then one teacher-forced pass over prompt +
answer (fovea's `seg.model.segment`), then SAM. Time is the FLOPs over the GPU's bf16 dense peak at
an assumed model FLOPs utilisation (MFU); it is an estimate, not a measurement (no GPU was lent).

    python benchmarks/seg_cost.py [--answer-tokens 8] [--mfu 0.4] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse

from accelerate import init_empty_weights
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    Qwen2Config,
    SamConfig,
    SamModel,
)

QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                 num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768)  # fmt: skip
MLCD_L = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              image_size=336, patch_size=14)  # fmt: skip
SAM_H = dict(vision_config=dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, mlp_dim=5120,
                                global_attn_indexes=[7, 15, 23, 31], window_size=14, output_channels=256))  # fmt: skip


def parameters(build) -> dict[str, int]:
    with init_empty_weights():
        model = build()
    return {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}


def lm_flops(params: int, layers: int, width: int, tokens: int, context: int) -> float:
    """A forward over `tokens` new tokens that attend to `context` tokens in all."""
    return 2 * params * tokens + layers * 2 * 2 * tokens * context * width


def sam_encoder_flops(params: int, width: int, layers: int, global_layers: int) -> float:
    tokens, window = 64 * 64, 14 * 14
    windowed = (layers - global_layers) * 4 * (25 * window) * window * width  # 25 padded windows
    full = global_layers * 4 * tokens * tokens * width
    return 2 * params * tokens + windowed + full


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--answer-tokens", type=int, default=8, help="'Sure, [SEG].' and its end")
    parser.add_argument("--prompt-text", type=int, default=40, help="text tokens of the prompt")
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense")
    args = parser.parse_args()

    lm = parameters(lambda: AutoModelForCausalLM.from_config(Qwen2Config(**QWEN25_7B)))
    tower = sum(parameters(lambda: CLIPVisionModel(CLIPVisionConfig(**MLCD_L))).values())
    sam = parameters(lambda: SamModel(SamConfig(**SAM_H)))
    projector = 1024 * 3584 + 3584 + 3584 * 3584 + 3584  # mlp2x_gelu
    text2sam = 3584 * 256 + 256 + 256 * 256 + 256
    lm_params = sum(lm.values())
    body = lm_params - 152064 * 3584 * 2  # embeddings are looked up; the head runs on the last position
    visual = 5 * 576 + 2 * 24 + 24  # 2x2 tiles + base view, unpadded rows' newlines (square image)
    prompt = visual + args.prompt_text
    total = prompt + args.answer_tokens

    vision = 5 * (2 * tower * 577 + 24 * 4 * 577 * 577 * 1024) + 2 * projector * 5 * 576
    prefill = lm_flops(body, 28, 3584, prompt, prompt) + 2 * 152064 * 3584
    decode = sum(
        lm_flops(body, 28, 3584, 1, prompt + k) + 2 * 152064 * 3584 for k in range(args.answer_tokens)
    )
    forced = lm_flops(body, 28, 3584, total, total) + 2 * text2sam  # no LM head: only [SEG] states
    encoder = sam_encoder_flops(sam["vision_encoder"], 1280, 32, 4)
    decoder = 2 * (sam["mask_decoder"] + sam["prompt_encoder"]) * 4096
    # the answer's prefill and the teacher-forced pass each encode the 5 views
    parts = {"vision (5 views) + projector, twice": 2 * vision, "LM prefill": prefill, "LM decode": decode,
             "LM teacher-forced pass": forced, "SAM-H image encoder": encoder, "SAM mask decoder": decoder}  # fmt: skip
    flops = sum(parts.values())

    weights = (lm_params + tower + projector + sum(sam.values()) + text2sam) * 2
    kv = 28 * 2 * 4 * 128 * total * 2  # layers, K and V, kv heads, head dim, tokens, bf16
    sam_act = 4096 * 1280 * 2 * 8  # the widest live tensors of one SAM block (MLP 4x and a residual)
    lm_act = total * 18944 * 2 * 3  # one MLP's gate, up and product
    # the teacher-forced pass skips the LM head (`seg_forward(..., logits=False)`): no (T, vocab) logits
    peak = weights + kv + max(sam_act, lm_act)

    print("| part | parameters |\n|---|---|")
    for name, count in {"Qwen2.5-7B": lm_params, "MLCD ViT-L/14-336": tower, "mlp2x_gelu": projector,
                        "SAM ViT-H (image encoder)": sam["vision_encoder"],
                        "SAM prompt encoder + mask decoder": sam["prompt_encoder"] + sam["mask_decoder"],
                        "text2sam": text2sam}.items():  # fmt: skip
        print(f"| {name} | {count / 1e6:,.1f} M |")
    print(f"\none segmentation: prompt {prompt:,} tokens ({visual:,} visual), answer {args.answer_tokens}")
    print("| stage | TFLOPs | share |\n|---|---|---|")
    for name, value in parts.items():
        print(f"| {name} | {value / 1e12:.2f} | {value / flops:.0%} |")
    seconds = flops / (args.peak_tflops * 1e12 * args.mfu)
    print(f"| total | {flops / 1e12:.2f} | 100% |")
    print(
        f"\ntime at {args.mfu:.0%} MFU of {args.peak_tflops:.0f} TFLOP/s: {seconds * 1e3:.0f} ms (compute bound; "
        f"the {args.answer_tokens} decode steps are memory bound: {args.answer_tokens} x {lm_params * 2 / 1e9:.1f} GB "
        f"read at 3.35 TB/s = {args.answer_tokens * lm_params * 2 / 3.35e12 * 1e3:.0f} ms more)"
    )
    print(
        f"peak memory: weights {weights / 2**30:.2f} GiB (bf16) + KV cache {kv / 2**20:.1f} MiB + largest "
        f"activations {max(sam_act, lm_act) / 2**20:.0f} MiB = {peak / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    main()
