"""`fovea serve` with the official openai client: answers equal the Python API, streaming and
not, with one and several images; bad requests get the right 4xx and the server keeps serving;
16 concurrent clients all succeed and are batched together."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fovea
from fovea.infer.requests import Limits
from fovea.infer.server import ServeConfig, create_app
from fovea.tiny import tiny_vlm

EXAMPLES = Path(__file__).parents[1] / "examples" / "images"
KEY = "test-key"


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(n)
    return [Image.fromarray((rng.random((30 + 10 * i, 60, 3)) * 255).astype("uint8")) for i in range(n)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    root = tmp_path_factory.mktemp("serve")
    model = fovea.load(tiny_vlm().save_pretrained(root / "model"))
    allowed = root / "allowed"
    allowed.mkdir()
    shutil.copy(EXAMPLES / "shapes.png", allowed / "shapes.png")
    limits = Limits(max_images=3, max_pixels=400_000, max_tokens=64, image_dir=allowed)
    app = create_app(model, ServeConfig(name="tiny", api_key=KEY, limits=limits, max_body_bytes=2_000_000))
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.02)
    port = uv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", model, app
    uv.should_exit = True
    thread.join(timeout=30)


def _client(url: str, key: str = KEY):
    from openai import OpenAI

    return OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def _content(text: str, images: list) -> list[dict]:
    return [
        *({"type": "image_url", "image_url": {"url": _data_url(im)}} for im in images),
        {"type": "text", "text": text},
    ]


@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_openai_client_gets_what_the_python_api_gives(server, n_images):
    url, model, _ = server
    images = _images(n_images)
    client = _client(url)
    messages = [{"role": "user", "content": _content("Describe.", images)}]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    expected = model.chat(
        [{"role": "user", "content": "<image>\n" * n_images + "Describe."}], images, max_new_tokens=10
    )
    assert reply.choices[0].message.content == expected
    assert reply.usage.completion_tokens <= 10
    stream = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=10, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert streamed.strip() == expected


def test_models_and_health(server):
    url, _, _ = server
    assert [m.id for m in _client(url).models.list().data] == ["tiny"]
    with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
        assert json.loads(response.read())["status"] == "ok"


class Reply:
    def __init__(self, status: int, text: str):
        self.status_code, self.text = status, text

    def json(self):
        return json.loads(self.text)


def _post(url: str, body, key: str | None = KEY) -> Reply:
    headers = {"content-type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", data=content, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Reply(response.status, response.read().decode())
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.read().decode())


def _msg(parts):
    return {"model": "tiny", "messages": [{"role": "user", "content": parts}], "max_tokens": 4}


@pytest.mark.parametrize(
    ("name", "body", "key", "status", "code"),
    [
        ("malformed json", b"{not json", KEY, 400, "invalid_json"),
        (
            "undecodable image",
            _msg([{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}]),
            KEY,
            400,
            "invalid_image",
        ),
        (
            "huge image",
            _msg([{"type": "image_url", "image_url": {"url": _data_url(Image.new("RGB", (1000, 1000)))}}]),
            KEY,
            400,
            "invalid_image",
        ),
        (
            "too many images",
            _msg([{"type": "image_url", "image_url": {"url": _data_url(Image.new("RGB", (8, 8)))}}] * 4),
            KEY,
            400,
            "too_many_images",
        ),
        ("unknown model", {**_msg("hi"), "model": "gpt-9"}, KEY, 404, "model_not_found"),
        ("missing key", _msg("hi"), None, 401, "invalid_api_key"),
        ("wrong key", _msg("hi"), "nope", 401, "invalid_api_key"),
        (
            "path outside the allowed dir",
            _msg([{"type": "image_url", "image_url": {"url": "../model/config.json"}}]),
            KEY,
            403,
            "path_not_allowed",
        ),
        (
            "remote url disabled",
            _msg([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]),
            KEY,
            400,
            None,
        ),
        ("max_tokens too large", {**_msg("hi"), "max_tokens": 10_000}, KEY, 400, None),
        ("body too large", b"x" * 2_100_000, KEY, 413, "body_too_large"),
    ],
)
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, name, body, key, status, code):
    url, _, _ = server
    response = _post(url, body, key)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and (code is None or error["code"] == code)
    assert _post(url, _msg("still there?")).status_code == 200


def test_local_image_inside_the_allowed_dir(server):
    url, _, _ = server
    assert (
        _post(
            url,
            _msg([{"type": "image_url", "image_url": {"url": "shapes.png"}}, {"type": "text", "text": "?"}]),
        ).status_code
        == 200
    )


def test_sixteen_concurrent_clients_are_batched(server):
    url, _, app = server
    engine = app.state.engine
    seen = []
    original = engine._run

    def spy(batch):
        seen.append(len(batch))
        return original(batch)

    engine._run = spy
    try:

        def one(i: int) -> str:
            client = _client(url)
            reply = client.chat.completions.create(
                model="tiny",
                max_tokens=8,
                temperature=0,
                messages=[{"role": "user", "content": _content(f"q{i}", _images(1))}],
            )
            return reply.choices[0].finish_reason

        with ThreadPoolExecutor(16) as pool:
            reasons = list(pool.map(one, range(32)))
    finally:
        engine._run = original
    assert len(reasons) == 32 and all(r in ("stop", "length") for r in reasons)
    assert max(seen) > 1  # requests shared decode steps instead of queueing one by one


def test_sigterm_finishes_in_flight_requests(tmp_path):
    """`fovea serve` as users run it: a request in flight when SIGTERM arrives still completes."""
    import signal

    from serve_process import serve_process

    checkpoint = tiny_vlm().save_pretrained(tmp_path / "model")
    with serve_process(checkpoint, "--name", "tiny", "--max-tokens", "512") as (server, url):
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Talk."}],
            "max_tokens": 400,
            "temperature": 0,
        }
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(_post, url, body, None)
            time.sleep(1.0)  # the request is being decoded
            server.send_signal(signal.SIGTERM)
            reply = pending.result(timeout=120)
        assert reply.status_code == 200 and reply.json()["choices"][0]["finish_reason"] in ("stop", "length")
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--port", "99999"], "--port 99999: expected a port number from 1 to 65535"),
        (["--port", "0"], "--port 0: expected a port number from 1 to 65535"),
        (["--max-pixels", "-5"], "--max-pixels -5: expected a positive number"),
        (["--max-images", "0"], "--max-images 0: expected a positive number"),
        (["--max-tokens", "-1"], "--max-tokens -1: expected a positive number"),
        (["--max-body-mb", "nan"], "--max-body-mb nan: expected a positive number"),
        (["--max-body-mb", "inf"], "--max-body-mb inf: expected a positive number"),
        (["--max-batch", "0"], "--max-batch 0: expected a positive number"),
        (["--image-dir", "/nonexistent"], "--image-dir /nonexistent: no such directory"),
        (["--image-dir", __file__], f"--image-dir {__file__}: not a directory"),
    ],
    ids=lambda v: "" if isinstance(v, str) else " ".join(v).replace(__file__, "FILE"),
)
def test_bad_serve_flags_are_one_line_before_the_model_loads(flags, message, capsys):
    from fovea.cli import main

    # the model does not exist: the flag is reported first, without minutes spent loading
    assert main(["serve", "--model", "/nonexistent/model", *flags]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"fovea: error: {message}"] and not out


def test_bad_serve_port_from_the_shell_is_one_line(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "fovea.cli", "serve", "--model", str(tmp_path), "--port", "99999"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "--port 99999" in proc.stderr
