"""`fovea serve` as users start it: a separate process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_process(checkpoint, *args: str):
    """Start `fovea serve --model checkpoint ARGS` and yield (process, base URL) once /health
    answers (or the process has exited); the process is killed on the way out if still running."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "fovea.cli", "serve", "--model", str(checkpoint), "--port", str(port), *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if server.poll() is not None:
                break
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield server, url
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)


@contextlib.contextmanager
def serve_in_thread(app, log_level: str = "critical"):
    """Run the ASGI `app` with uvicorn in a thread on a free loopback port; yield the port."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level=log_level))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
