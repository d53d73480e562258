"""Continuous vs static batching in fovea's engine, side by side in one run, on the same arrivals.

A tiny random model; requests arrive as a Poisson process at several rates, a mix of short
(8-token) and long (96-token) answers (decoded to their full length, ``ignore_eos``). For each
scheduler: aggregate completion tokens/s, time to first token and end-to-end latency (p50, p99),
and the latency of a 4-token request submitted while a 200-token one is decoding.

    python benchmarks/serve_scheduling.py [--requests 48] [--rates 4,16,64]
    python benchmarks/serve_scheduling.py --requests 96 --rates 256,1024    # where static saturates
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time

from common import table


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Timing:
    def __init__(self, submitted: float):
        self.submitted, self.first, self.end, self.tokens, self.failed = submitted, None, None, 0, False
        self.done = threading.Event()

    def __call__(self, kind, value):
        now = time.perf_counter()
        if kind == "text" and self.first is None:
            self.first = now
        elif kind in ("done", "error"):
            self.end, self.tokens, self.failed = now, getattr(value, "completion_tokens", 0), kind == "error"
            self.done.set()


def _submit(engine, prompt: str, max_tokens: int) -> Timing:
    from fovea.infer.engine import Request

    timing = Timing(time.perf_counter())
    messages = [{"role": "user", "content": prompt}]
    engine.submit(Request(messages, max_tokens=max_tokens, ignore_eos=True, emit=timing))
    return timing


def _load(engine, requests: int, rate: float, seed: int) -> list:
    rng, timings = random.Random(seed), []
    for i in range(requests):
        timings.append(_submit(engine, f"Question {i}?", 96 if rng.random() < 0.25 else 8))
        time.sleep(rng.expovariate(rate))
    for timing in timings:
        timing.done.wait(600)
    return timings


def _short_during_long(engine) -> float:
    long = _submit(engine, "Talk at length.", 200)
    while long.first is None:
        time.sleep(0.001)
    time.sleep(0.05)  # the long one is decoding
    short = _submit(engine, "Hi.", 4)
    short.done.wait(600)
    long.done.wait(600)
    return short.end - short.submitted


def run(requests: int, rates: list[float]) -> str:
    from fovea.infer.engine import Engine
    from fovea.tiny import tiny_vlm

    model, rows, ratios = tiny_vlm(), [], {}
    for rate in rates:
        for name, continuous in (("static", False), ("continuous", True)):
            engine = Engine(model, max_batch=16, continuous=continuous)
            _load(engine, 4, 100.0, seed=1)  # warm-up
            start = time.perf_counter()
            timings = _load(engine, requests, rate, seed=0)
            elapsed = time.perf_counter() - start
            short = statistics.median(_short_during_long(engine) for _ in range(3))
            engine.close()
            ttft = [(t.first or t.end) - t.submitted for t in timings]
            e2e = [t.end - t.submitted for t in timings]
            throughput = sum(t.tokens for t in timings) / elapsed
            ratios.setdefault(rate, {})[name] = (throughput, _percentile(e2e, 0.5), short)
            rows.append(
                [f"{rate:g}/s", name, sum(t.failed for t in timings), f"{throughput:.0f}"]
                + [f"{1000 * _percentile(v, q):.0f}" for v in (ttft, e2e) for q in (0.5, 0.99)]
                + [f"{1000 * short:.0f}"]
            )
    head = [
        "arrivals",
        "scheduler",
        "failed",
        "tokens/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "e2e p50 ms",
        "e2e p99 ms",
    ]
    lines = [table(head + ["4-token request during a 200-token one, ms"], rows), ""]
    for rate, pair in ratios.items():
        (ts, es, ss), (tc, ec, sc) = pair["static"], pair["continuous"]
        lines.append(
            f"{rate:g}/s: continuous/static tokens/s **{tc / ts:.2f}x**, e2e p50 **{es / ec:.2f}x** faster, "
            f"short-during-long **{ss / sc:.1f}x** faster"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--rates", default="4,16,64", help="arrivals per second, comma-separated")
    args = parser.parse_args()
    print(run(args.requests, [float(r) for r in args.rates.split(",")]))
