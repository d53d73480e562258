"""Loopback load test of `fovea serve`: 1 client vs 16 concurrent clients.

A tiny random model is served by `fovea serve` in its own process on 127.0.0.1 (a free port). One client sends
`--requests` requests one after another; then 16 clients send the same number concurrently
(bounded: a fixed request count and a per-request timeout). Reported: failed requests,
aggregate completion tokens/s of each phase and their ratio, and the server process's RSS after
each of several concurrent rounds (memory must level off, not creep).

    python benchmarks/serve_load.py [--requests 64] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(requests: int, max_tokens: int, rounds: int) -> str:
    import subprocess
    import sys
    import urllib.request

    from fovea.tiny import tiny_vlm

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = tiny_vlm().save_pretrained(Path(tmp) / "tiny")
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "fovea.cli", "serve", "--model", str(checkpoint), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):  # wait (bounded) for the server to come up
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            process = psutil.Process(server.pid)
            _phase(url, 1, 4, max_tokens)  # warm-up
            single = _phase(url, 1, requests, max_tokens)
            rows = [
                [
                    "1 client",
                    requests,
                    single[2],
                    single[1],
                    f"{single[0]:.0f}",
                    f"{process.memory_info().rss / 2**20:.0f}",
                ]
            ]
            ratios = []
            for round_ in range(rounds):
                many = _phase(url, 16, requests, max_tokens)
                ratios.append(many[0] / single[0])
                rows.append(
                    [
                        f"16 clients, round {round_ + 1}",
                        requests,
                        many[2],
                        many[1],
                        f"{many[0]:.0f}",
                        f"{process.memory_info().rss / 2**20:.0f}",
                    ]
                )
        finally:
            server.terminate()
            server.wait(timeout=60)
    head = ["phase", "requests", "failed", "completion tokens", "aggregate tokens/s", "server RSS after, MiB"]
    return (
        table(head, rows)
        + f"\n\n16 clients / 1 client: **{statistics.median(ratios):.2f}x** aggregate tokens/s (median of rounds)."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="concurrent rounds (memory must level off)")
    args = parser.parse_args()
    print(run(args.requests, args.max_tokens, args.rounds))
