"""What `fovea serve` shows at ``GET /metrics``, in Prometheus' text format (through
`prometheus-client`): one registry per app, so several apps in one process never mix counts.

Counted as each request ends (`ServerMetrics.ended`): requests by HTTP status (499: the client
left), prompt and generated tokens, and histograms of queue time (queued to prefilled), time to
first token and total time. Read at each scrape: sequences running and requests waiting in the
engine, the KV cache's live tokens and allocated bytes, and the image stage's pixels in use (of its
budget), requests waiting for room and requests decoding.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    def __init__(self, engine, images):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "fovea_requests", "Chat completion requests, by HTTP status", ["status"], registry=registry
        )
        self.prompt_tokens = Counter(
            "fovea_prompt_tokens", "Prompt tokens of answered requests", registry=registry
        )
        self.generated_tokens = Counter(
            "fovea_generated_tokens", "Tokens generated in answers", registry=registry
        )
        self.queue = _histogram("fovea_queue_seconds", "From queued to prefilled", registry)
        self.first_token = _histogram(
            "fovea_time_to_first_token_seconds", "From queued to the first text", registry
        )
        self.total = _histogram("fovea_request_seconds", "From queued to the last event", registry)
        gauges = {
            "fovea_running_sequences": ("Sequences in the running batch", lambda: engine.load.running),
            "fovea_waiting_requests": ("Requests queued for the engine", engine.queue.qsize),
            "fovea_kv_cache_tokens": ("Tokens held in the KV cache", lambda: engine.load.kv_tokens),
            "fovea_kv_cache_bytes": ("Bytes of KV cache allocated (padding included)", lambda: engine.load.kv_bytes),
            "fovea_image_pixels_in_use": ("Image pixels admitted and not yet tiled", lambda: images.budget.used),
            "fovea_image_pixels_budget": ("The image pixel budget", lambda: images.budget.limit),
            "fovea_image_requests_waiting": ("Requests waiting for room in the pixel budget", lambda: images.budget.waiting),
            "fovea_image_requests_decoding": ("Requests whose images are being decoded or tiled", lambda: images.decoding),
        }  # fmt: skip
        for name, (help_text, read) in gauges.items():
            Gauge(name, help_text, registry=registry).set_function(read)

    def ended(self, status: int, prompt=0, generated=0, queue=None, first_token=None, total=None) -> None:
        """Count one request that ended with `status` (times in seconds; None: it never got there)."""
        self.requests.labels(status=str(status)).inc()
        self.prompt_tokens.inc(prompt)
        self.generated_tokens.inc(generated)
        for histogram, seconds in ((self.queue, queue), (self.first_token, first_token), (self.total, total)):
            if seconds is not None:
                histogram.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _histogram(name: str, help_text: str, registry) -> Histogram:
    return Histogram(name, help_text, buckets=_SECONDS, registry=registry)
