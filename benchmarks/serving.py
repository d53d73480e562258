"""Shared by the serving benchmarks: `fovea serve` in its own process on a free loopback port, plain
HTTP calls that report the status instead of raising, and test images."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(*flags: str, log: Path | None = None, prepare=None):
    """(base url, the server's psutil.Process) of `fovea serve` on a tiny random model, with `flags`;
    `prepare(model)` may change the model before it is saved; the server's stderr (the per-request
    log lines) goes to `log`."""
    from fovea.tiny import tiny_vlm

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_vlm()
        if prepare is not None:
            prepare(model)
        checkpoint = model.save_pretrained(Path(tmp) / "tiny")
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "fovea.cli",
            "serve",
            "--model",
            str(checkpoint),
            "--port",
            str(port),
        ]
        with open(log or Path(tmp) / "server.log", "w") as errors:
            server = subprocess.Popen([*command, *flags], stdout=subprocess.DEVNULL, stderr=errors)
            url = f"http://127.0.0.1:{port}"
            try:
                _wait_healthy(url, server)
                yield url, psutil.Process(server.pid)
            finally:
                server.terminate()
                server.wait(timeout=120)


def _wait_healthy(url: str, server: subprocess.Popen) -> None:
    for _ in range(1200):  # bounded: 2 minutes for the import and the model
        if server.poll() is not None:
            raise RuntimeError(f"fovea serve exited with {server.returncode} before answering /health")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("fovea serve did not answer /health within 2 minutes")


def post(url: str, body: dict | bytes, timeout: float = 600) -> tuple[int, float]:
    """(HTTP status, seconds) of one chat completion; a refused or broken connection is status 0."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", data=data, headers={"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        err.read()
        status = err.code
    except OSError:
        status = 0
    return status, time.perf_counter() - start


def chat(text: str, images: list[str] = (), max_tokens: int = 8, **extra) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in images]
    message = {"role": "user", "content": [*parts, {"type": "text", "text": text}]}
    return {"model": "tiny", "messages": [message], "max_tokens": max_tokens, "temperature": 0, **extra}


def png_url(width: int, height: int, seed: int = 0) -> str:
    """A data URL of a width x height PNG: smooth gradients with a little noise, so a 4000x4000
    one is a few MB, as a photo's PNG is, not 48 MB of random bytes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [(x / width * 255), (y / height * 255), ((x + y) / (width + height) * 255)]
    pixels = np.stack(channels, -1) + rng.integers(0, 2, (1, width, 1))  # a little texture
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class RssSampler:
    """The peak RSS of a process, sampled every `every` seconds in a thread while in the `with`."""

    def __init__(self, process: psutil.Process, every: float = 0.05):
        self.process, self.every, self.peak = process, every, 0
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.every)
