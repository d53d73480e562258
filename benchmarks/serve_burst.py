"""A burst of big images against `fovea serve`: does text still get through, and does memory hold?

`fovea serve` (a tiny random model, its own process on 127.0.0.1) gets `--burst` concurrent
requests of `--images` 4000x4000 PNGs each (8 x 8 by default: a gigapixel, against a budget of
`--budget-mpixels`). Meanwhile one client sends text-only requests one after another, and another
sends requests with one 56x56 image. Reported:

* the text and small-image requests' median latency during the burst against alone (the ratio);
* the burst's answers by status (a 429 is the pixel budget's queue being full: expected, counted);
* the server's RSS: before, its peak during the burst (sampled every 50 ms) against the budget in
  bytes (Pillow holds a decoded RGB pixel in 4), and after the burst once idle (memory must come back).

    python benchmarks/serve_burst.py [--burst 8] [--images 8] [--budget-mpixels 256]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from serving import RssSampler, chat, png_url, post, served

from common import table

MIB = 2**20


def _latencies(url: str, body: dict, until: threading.Event, at_least: int) -> list[float]:
    """Seconds of each `body` request, sent one after another until `until` is set (and `at_least`)."""
    times = []
    while not until.is_set() or len(times) < at_least:
        status, seconds = post(url, body)
        if status != 200:
            raise RuntimeError(f"a {body['messages'][0]['content'][-1]['text']!r} request got {status}")
        times.append(seconds)
    return times


def _alone(url: str, probes: dict[str, dict], count: int) -> dict[str, float]:
    done = threading.Event()
    done.set()
    return {name: statistics.median(_latencies(url, body, done, count)) for name, body in probes.items()}


def _burst(url: str, process, probes: dict[str, dict], burst: int, images: int) -> tuple:
    big = chat("Describe these.", [png_url(4000, 4000, seed=i) for i in range(images)])
    finished = threading.Event()
    with RssSampler(process) as rss, ThreadPoolExecutor(burst + len(probes)) as pool:
        watchers = {name: pool.submit(_latencies, url, body, finished, 3) for name, body in probes.items()}
        start = time.perf_counter()
        answers = [pool.submit(post, url, big) for _ in range(burst)]
        statuses = collections.Counter(future.result()[0] for future in answers)
        seconds = time.perf_counter() - start
        finished.set()
        during = {name: statistics.median(future.result()) for name, future in watchers.items()}
    return during, statuses, seconds, rss.peak


def run(burst: int, images: int, budget_mpixels: int, settle: float) -> str:
    flags = ["--max-inflight-mpixels", str(budget_mpixels)]
    probes = {
        "text only": chat("Say something."),
        "one 56x56 image": chat("What is this?", [png_url(56, 56)]),
    }
    with served(*flags) as (url, process):
        alone = _alone(url, probes, 10)
        before = process.memory_info().rss
        during, statuses, seconds, peak = _burst(url, process, probes, burst, images)
        time.sleep(settle)
        after = process.memory_info().rss
        again = _alone(url, probes, 10)
    rows = [[name, f"{alone[name]:.3f}", f"{during[name]:.3f}", f"{during[name] / alone[name]:.1f}x",
             f"{again[name]:.3f}"] for name in probes]  # fmt: skip
    budget = budget_mpixels * 1e6 * 4  # decoded: Pillow holds RGB as 4 bytes a pixel
    return "\n".join([
        table(["request", "alone, s (median)", "during the burst, s", "ratio", "after, s"], rows),
        "",
        f"Burst: {burst} requests x {images} images of 4000x4000 in {seconds:.1f} s; answers by status: "
        + ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items())) + ".",
        f"Server RSS: {before / MIB:.0f} MiB before, peak {peak / MIB:.0f} MiB during "
        f"(+{(peak - before) / MIB:.0f} MiB against a budget of {budget / MIB:.0f} MiB decoded), "
        f"{after / MIB:.0f} MiB {settle:g} s after.",
    ])  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--burst", type=int, default=8, help="concurrent big-image requests")
    parser.add_argument("--images", type=int, default=8, help="4000x4000 images per request")
    parser.add_argument("--budget-mpixels", type=int, default=256, help="the server's --max-inflight-mpixels")
    parser.add_argument("--settle", type=float, default=5.0, help="idle seconds before RSS is read after")
    args = parser.parse_args()
    print(run(args.burst, args.images, args.budget_mpixels, args.settle))
