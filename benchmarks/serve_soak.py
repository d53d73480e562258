"""A soak of `fovea serve` under faults: poison, clients that leave, and what abandoned work costs.

`fovea serve` (a tiny random model, its own process on 127.0.0.1) gets `--requests` requests from
16 concurrent clients, in a seeded order: 85% good ones (text or one image, streamed or not,
greedy), 5% poison (16 kinds: nested, truncated or non-JSON bodies, wrong types, bad images,
prompts over the context ...), 10% whose client leaves (streamed: after the first chunk; plain:
after 0.3 s). Reported:

* collateral failures: good requests that did not get a 200 with the answer the same request got
  alone (greedy answers do not depend on company);
* 5xx answers, from the clients' side and from the server's own count at /metrics;
* the server's RSS after each tenth of the soak (after warm-up it must stay flat);
* abandoned cost: long answers (`--long` tokens) whose client leaves after `--leave-after` s, each
  alone, streamed and not: the server's CPU from sending to idle, and the part of it after the
  client left (the waste), against the same answer read to the end.

So that long answers really run long, the model's end-of-text and template stop tokens are given
zero output weights (a random model would otherwise end within ~150 tokens).

    python benchmarks/serve_soak.py [--requests 1000] [--long 2000] [--leave-after 0.5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

from serve_poison import POISON
from serving import chat, png_url, served

from common import table

MIB = 2**20
PROMPTS = ["Describe it.", "What colour?", "Count them.", "Where is it?", "Say more.", "Why?"]


def _no_stops(model) -> None:
    """Zero the output rows of EOS and the template's stop tokens: greedy never picks them."""
    import torch

    with torch.no_grad():
        for token in model.stop_token_ids():
            model.lm.get_output_embeddings().weight[token].zero_()
    model.config.max_length = 4096


def _connection(url: str) -> http.client.HTTPConnection:
    parsed = urlparse(url)
    return http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=300)


def _send(url: str, body: dict | bytes, content_type: str = "application/json"):
    connection = _connection(url)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request("POST", "/v1/chat/completions", data, {"Content-Type": content_type})
    return connection


def _answer(url: str, body: dict) -> tuple[int, str]:
    """(status, the answer's text: the message, or the streamed deltas joined)."""
    connection = _send(url, body)
    response = connection.getresponse()
    raw = response.read().decode()
    connection.close()
    if response.status != 200:
        return response.status, raw
    if not body.get("stream"):
        return 200, json.loads(raw)["choices"][0]["message"]["content"]
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ") and line != "data: [DONE]"]
    parts = [
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events if '"choices": [{' in e
    ]
    return 200, "".join(parts).strip()


def _leave(url: str, body: dict, after: float, leaving=lambda: None) -> None:
    """Send `body` and go away: a stream after its first chunk, a plain request after `after` s;
    `leaving()` is called just before."""
    connection = _send(url, body)
    if body.get("stream"):
        response = connection.getresponse()
        response.fp.readline()
    else:
        time.sleep(after)
    leaving()
    connection.sock.close()


def _good(rng: random.Random, image: str) -> dict:
    with_image = rng.random() < 0.5
    body = chat(rng.choice(PROMPTS), [image] if with_image else [], max_tokens=16)
    return {**body, "stream": rng.random() < 0.5}


def _plan(count: int, seed: int, image: str) -> list[tuple[str, object]]:
    rng, plan = random.Random(seed), []
    for _ in range(count):
        draw = rng.random()
        if draw < 0.05:
            plan.append(("poison", rng.choice(list(POISON))))
        elif draw < 0.15:
            plan.append(("leave", {**_good(rng, image), "max_tokens": 400}))
        else:
            plan.append(("good", _good(rng, image)))
    return plan


def poison_statuses(url: str) -> list[list]:
    """Each kind of poison once, alone: its status."""
    rows = []
    for name, make in POISON.items():
        body, content_type = make()
        connection = _send(url, body, content_type)
        response = connection.getresponse()
        error = json.loads(response.read() or b"{}").get("error", {})
        connection.close()
        rows.append([name, response.status, error.get("code") or error.get("type", "")])
    return rows


def _run_one(url: str, kind: str, item, expected: dict) -> tuple[str, str]:
    """(kind, outcome): ok, collateral (a good request failed), 5xx, or poison-answered."""
    if kind == "leave":
        _leave(url, item, 0.3)
        return kind, "ok"
    if kind == "poison":
        body, content_type = POISON[item]()
        try:
            connection = _send(url, body, content_type)
            status = connection.getresponse().status
            connection.close()
        except OSError:
            return kind, "broken connection"
        return kind, "5xx" if status >= 500 else ("ok" if 400 <= status < 500 else f"status {status}")
    status, text = _answer(url, item)
    if status >= 500:
        return kind, "5xx"
    return kind, "ok" if status == 200 and text == expected[_key(item)] else "collateral"


def _key(body: dict) -> str:
    """A good request's identity, streamed or not (both must give the same text)."""
    return json.dumps({k: v for k, v in body.items() if k != "stream"}, sort_keys=True)


def soak(url: str, process, count: int, seed: int) -> tuple[dict, list[int]]:
    image = png_url(56, 56, seed=1)
    plan = _plan(count, seed, image)
    expected = {}
    for kind, item in plan:  # each distinct good request, alone first
        if kind == "good" and _key(item) not in expected:
            expected[_key(item)] = _answer(url, {**item, "stream": False})[1]
    outcomes, rss = {}, []
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(_run_one, url, kind, item, expected) for kind, item in plan]
        for i, future in enumerate(futures, 1):
            kind, outcome = future.result()
            outcomes[(kind, outcome)] = outcomes.get((kind, outcome), 0) + 1
            if i % max(1, count // 10) == 0:
                rss.append(process.memory_info().rss)
    return outcomes, rss


def _idle(url: str, timeout: float = 600) -> None:
    """Until the server's engine runs nothing (its /metrics says so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        connection = _connection(url)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
        connection.close()
        busy = [
            line
            for line in text.splitlines()
            if line.startswith(("fovea_running_sequences ", "fovea_waiting_requests "))
        ]
        if all(float(line.split()[1]) == 0 for line in busy):
            return
        time.sleep(0.02)
    raise RuntimeError("the server did not go idle")


def _cpu(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _cpu_of(url: str, process, action) -> float:
    """Server CPU seconds from `action()` until the engine is idle again (it was idle before)."""
    _idle(url)
    start = _cpu(process)
    action()
    _idle(url)
    return _cpu(process) - start


def _abandoned(url: str, process, body: dict, after: float) -> tuple[float, float]:
    """(server CPU seconds in all, of which after the client left) of one abandoned answer."""
    at_leaving = []
    total = _cpu_of(url, process, lambda: _leave(url, body, after, lambda: at_leaving.append(_cpu(process))))
    return total, _cpu(process) - at_leaving[0]


def abandoned_cost(url: str, process, tokens: int, after: float, repeats: int) -> list[list]:
    rows = []
    for stream in (False, True):
        body = {**chat("Tell a long story.", max_tokens=tokens), "stream": stream}
        full, left, wasted = [], [], []
        for _ in range(repeats):
            full.append(_cpu_of(url, process, lambda: _answer(url, body)))  # noqa: B023 (called at once)
            total, after_leaving = _abandoned(url, process, body, after)
            left.append(total)
            wasted.append(after_leaving)
        full_cpu, left_cpu, wasted_cpu = (statistics.median(x) for x in (full, left, wasted))
        rows.append([
            "streamed" if stream else "plain", f"{full_cpu:.2f}", f"{left_cpu:.2f} ({left_cpu / full_cpu:.1%})",
            f"{wasted_cpu:.3f} ({wasted_cpu / full_cpu:.1%})",
        ])  # fmt: skip
    return rows


def run(count: int, seed: int, tokens: int, after: float, repeats: int) -> str:
    with served("--max-tokens", str(tokens), prepare=_no_stops) as (url, process):
        poison = poison_statuses(url)
        outcomes, rss = soak(url, process, count, seed)
        connection = _connection(url)
        connection.request("GET", "/metrics")
        scraped = connection.getresponse().read().decode()
        server_5xx = sum(
            float(line.split()[1])
            for line in scraped.splitlines()
            if line.startswith('fovea_requests_total{status="5')
        )
        cost = abandoned_cost(url, process, tokens, after, repeats)
    rows = [[kind, outcome, n] for (kind, outcome), n in sorted(outcomes.items())]
    tail = rss[2:] or rss
    return "\n".join([
        table(["poison, alone", "status", "code"], poison),
        "",
        table(["request", "outcome", "count"], rows),
        "",
        f"5xx counted by the server itself: {server_5xx:.0f}.",
        "Server RSS after each tenth, MiB: " + ", ".join(f"{r / MIB:.0f}" for r in rss)
        + f" (after the first two tenths: {min(tail) / MIB:.0f}-{max(tail) / MIB:.0f}).",
        "",
        f"Abandoned answers ({tokens} tokens; the client leaves after {after:g} s or the first chunk), "
        f"server CPU seconds, median of {repeats}:",
        "",
        table(["answer", "read to the end", "abandoned: in all", "of which after the client left"], cost),
    ])  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long", type=int, default=2000, help="tokens of the abandoned answers")
    parser.add_argument("--leave-after", type=float, default=0.5, help="seconds before a plain client leaves")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(run(args.requests, args.seed, args.long, args.leave_after, args.repeats))
