"""Shared helpers for the benchmark scripts: medians of repeated timings, RSS, Markdown rows."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn` in seconds over `repeats` runs (after `warmup` runs)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, float]:
    """Median times of several functions, run alternately so machine noise hits all alike (after
    one untimed run each, unless the caller warmed them up already)."""
    for fn in fns.values() if warmup else ():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def qwen2_config(layers: int) -> dict:
    """A Qwen2.5-0.5B-shaped LM config (width 896, Qwen2.5's vocabulary) with `layers` layers."""
    return {
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": layers,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "tie_word_embeddings": False,
    }


def save_random_llava_next(
    directory: Path, vision: dict, text: dict, pinpoints: list, shard: str = "5GB"
) -> None:
    """A random transformers LlavaNext checkpoint with fovea's tiny tokenizer and a processor."""
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from fovea.tiny import tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=pinpoints,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    LlavaNextForConditionalGeneration(config).save_pretrained(directory, max_shard_size=shard)
    size = vision["image_size"]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=pinpoints,
    )
    LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    ).save_pretrained(directory)


def memory_mark(device: str) -> int:
    """Bytes in use now, and the peak counter reset to it (CUDA: allocated; CPU: RSS, with the
    kernel's peak (VmHWM) reset through /proc/self/clear_refs). Pair with `memory_peak`."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:  # "5" resets the process's peak RSS (VmHWM) to its current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_kib("VmRSS") * 1024


def memory_peak(device: str) -> int | None:
    """The peak since `memory_mark` (None where the kernel cannot reset it)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated()
    return _status_kib("VmHWM") * 1024 if Path("/proc/self/clear_refs").exists() else None


def release_freed_memory_at_once() -> None:
    """glibc: mmap (and unmap on free) every block over 64 KiB, so RSS follows live memory."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def add_device_arguments(parser, repeats: int = 3) -> None:
    """``--repeats``, ``--device`` and ``--dtype``, as every tower/fuser benchmark takes them."""
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def peak_memory_mib(runs: dict[str, Callable[[], object]], device: str) -> dict[str, str]:
    """Each run's peak memory over what was live before it, in MiB ("n/a" where unmeasurable)."""
    out = {}
    for name, fn in runs.items():
        base = memory_mark(device)
        fn()
        peak = memory_peak(device)
        out[name] = "n/a" if peak is None else f"{(peak - base) / 2**20:.0f}"
    return out


def start(parser):
    """(args, device, dtype) from a parser with `add_device_arguments`: RSS made to follow live
    memory and torch seeded, as every tower/fuser benchmark begins."""
    import torch

    args = parser.parse_args()
    release_freed_memory_at_once()
    torch.manual_seed(0)
    return args, torch.device(args.device), getattr(torch, args.dtype)
