"""Loopback load test of `fovea serve`: 1 client vs 16 concurrent clients.

A tiny random model is served by `fovea serve` in its own process on 127.0.0.1 (a free port). One client sends
`--requests` requests one after another; then 16 clients send the same number concurrently
(bounded: a fixed request count and a per-request timeout). Reported: failed requests,
aggregate completion tokens/s of each phase and their ratio, and the server process's RSS after
each of several concurrent rounds (memory must level off, not creep).

    python benchmarks/serve_load.py [--requests 64] [--max-tokens 32]

`--scenario burst` runs the big-image burst instead (text latency during it, memory against the
pixel budget): see `serve_burst.py`, which takes the same run on its own with all its options.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from serving import served

from common import table


def _image_url(seed: int) -> str:
    image = Image.fromarray((np.random.default_rng(seed).random((48, 64, 3)) * 255).astype("uint8"))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _phase(url: str, clients: int, requests: int, max_tokens: int) -> tuple[float, int, int]:
    from openai import OpenAI

    local = threading.local()

    def one(i: int) -> int:
        if not hasattr(local, "client"):  # one client (one connection pool) per worker thread
            local.client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        reply = local.client.chat.completions.create(
            model="tiny",
            max_tokens=max_tokens,
            temperature=0,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": _image_url(i)}},
                        {"type": "text", "text": f"Question {i}?"},
                    ],
                }
            ],
        )
        return reply.usage.completion_tokens

    start, tokens, failures = time.perf_counter(), 0, 0
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(one, i) for i in range(requests)]:
            try:
                tokens += future.result()
            except Exception:  # counted, reported: the load test's point
                failures += 1
    return tokens / (time.perf_counter() - start), tokens, failures


def run(requests: int, max_tokens: int, rounds: int) -> str:
    with served() as (url, process):
        _phase(url, 1, 4, max_tokens)  # warm-up
        single = _phase(url, 1, requests, max_tokens)
        rss = lambda: f"{process.memory_info().rss / 2**20:.0f}"  # noqa: E731
        rows = [["1 client", requests, single[2], single[1], f"{single[0]:.0f}", rss()]]
        ratios = []
        for round_ in range(rounds):
            many = _phase(url, 16, requests, max_tokens)
            ratios.append(many[0] / single[0])
            rows.append(
                [f"16 clients, round {round_ + 1}", requests, many[2], many[1], f"{many[0]:.0f}", rss()]
            )
    head = ["phase", "requests", "failed", "completion tokens", "aggregate tokens/s", "server RSS after, MiB"]
    return (
        table(head, rows)
        + f"\n\n16 clients / 1 client: **{statistics.median(ratios):.2f}x** aggregate tokens/s (median of rounds)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=["throughput", "burst"], default="throughput")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="concurrent rounds (memory must level off)")
    args = parser.parse_args()
    if args.scenario == "burst":
        import serve_burst

        print(serve_burst.run(burst=8, images=8, budget_mpixels=256, settle=5.0))
    else:
        print(run(args.requests, args.max_tokens, args.rounds))
