"""`GET /metrics`: Prometheus' text format, parsed back by prometheus-client's own parser; each
count checked against what the requests were, and the KV gauges against the cache itself."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import fovea
from fovea.infer.engine import Engine
from fovea.infer.requests import Limits
from fovea.infer.server import ServeConfig, create_app
from fovea.tiny import tiny_vlm

from serve_process import serve_in_thread

KEY = "metrics-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = fovea.load(tiny_vlm().save_pretrained(tmp_path_factory.mktemp("metrics") / "model"))
    app = create_app(model, ServeConfig(name="tiny", api_key=KEY, limits=Limits(max_tokens=64)))
    with serve_in_thread(app, log_level="warning") as port:
        yield f"http://127.0.0.1:{port}", model


def _call(url: str, path: str, body: dict | None = None, key: str | None = KEY) -> tuple[int, bytes, str]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), ""


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    status, text, content_type = _call(url, "/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=")  # the exposition format
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_metrics_count_what_the_requests_were(server):
    url, _ = server
    before = _scrape(url)
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hello."}], "max_tokens": 6}
    usages = []
    for _ in range(3):
        status, body, _ = _call(url, "/v1/chat/completions", chat)
        assert status == 200
        usages.append(json.loads(body)["usage"])
    assert _call(url, "/v1/chat/completions", {**chat, "max_tokens": "six"})[0] == 400
    assert _call(url, "/v1/chat/completions", {**chat, "model": "other"})[0] == 404
    after = _scrape(url)

    def grew(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert grew("fovea_requests_total", status="200") == 3
    assert grew("fovea_requests_total", status="400") == 1 and grew("fovea_requests_total", status="404") == 1
    assert grew("fovea_prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert grew("fovea_generated_tokens_total") == sum(u["completion_tokens"] for u in usages)
    assert grew("fovea_request_seconds_count") == 5  # refusals too
    assert grew("fovea_queue_seconds_count") == 3 and grew("fovea_time_to_first_token_seconds_count") == 3
    assert after[("fovea_image_pixels_budget", ())] == 256_000_000
    for idle in ("fovea_running_sequences", "fovea_kv_cache_tokens", "fovea_image_pixels_in_use"):
        assert after[(idle, ())] == 0, idle


def test_metrics_are_behind_the_api_key(server):
    url, _ = server
    assert _call(url, "/metrics", key=None)[0] == 401
    assert _call(url, "/metrics", key="wrong")[0] == 401


def test_kv_gauges_measure_the_cache_itself(server):
    """Two prompts of different lengths (left-padded together) decode a few steps: the engine's
    load says the live tokens (the mask's ones) and the bytes of every key and value tensor."""
    _, model = server
    engine = Engine(model, max_batch=4)
    try:
        from fovea.infer.engine import Request

        stop = threading.Event()
        requests = [
            Request([{"role": "user", "content": text}], max_tokens=30, ignore_eos=True)
            for text in ("Hi.", "A longer prompt, with more words in it.")
        ]
        for request in requests:
            request.emit = lambda kind, value: stop.set() if kind == "done" else None
        engine.submit(requests[0])
        engine.submit(requests[1])
        deadline = time.monotonic() + 30
        while engine.load.running < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        batch = engine.running
        assert engine.load.running == 2 and batch is not None
    finally:
        engine.close()
    assert engine.load.running == 0 and engine.load.kv_bytes == 0
    engine.running = batch  # the batch as it last was: measure it again, here
    engine._measure()
    layers = batch.cache.layers
    cache_bytes = sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values))
    assert engine.load.kv_bytes == cache_bytes
    assert engine.load.kv_tokens == int(batch.mask.sum()) < batch.mask.numel()
