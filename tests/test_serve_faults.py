"""`fovea serve` under faults: an abandoned request stops costing CPU, every malformed body is a
4xx that leaves the connection usable, and a request without max_tokens fits the context.

The server runs in-process on loopback (uvicorn in a thread); clients are raw sockets and
``http.client`` keep-alive connections, so a disconnect and a reused connection are what they
would be for a real client.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time

import pytest

import fovea
from fovea.infer.requests import Limits
from fovea.infer.server import ServeConfig, create_app
from fovea.tiny import tiny_vlm

from serve_process import serve_in_thread

LONG = 3000  # tokens: seconds of decoding for the tiny model, unless cancelled


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = fovea.load(tiny_vlm().save_pretrained(tmp_path_factory.mktemp("faults") / "model"))
    model.config.max_length = 3200
    limits = Limits(max_tokens=LONG, default_max_tokens=40)
    app = create_app(model, ServeConfig(name="tiny", limits=limits))
    with serve_in_thread(app) as port:
        yield port, model, app.state.engine


def _body(**fields) -> bytes:
    return json.dumps(
        {"model": "tiny", "messages": [{"role": "user", "content": "Talk."}], **fields}
    ).encode()


def _post(connection: http.client.HTTPConnection, body: bytes) -> tuple[int, dict]:
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def test_an_abandoned_plain_request_stops_costing_cpu(server, monkeypatch):
    port, model, engine = server
    monkeypatch.setattr(model, "stop_token_ids", lambda template="default": [])  # it would run to LONG
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(_body(max_tokens=LONG))}\r\n\r\n"
    ).encode() + _body(max_tokens=LONG)
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(request)
    deadline = time.monotonic() + 10
    while engine.running is None and time.monotonic() < deadline:  # decoding has started
        time.sleep(0.01)
    time.sleep(0.3)
    client.close()  # the client goes away
    cpu, wall = time.process_time(), time.monotonic()
    while engine.busy.is_set() and time.monotonic() - wall < 5:
        time.sleep(0.01)
    time.sleep(1.0)
    used = time.process_time() - cpu
    assert engine.running is None and not engine.busy.is_set()
    assert used < 0.5, f"{used:.2f} s of CPU after the client left"  # decoding on would be ~2 s and more


def _bad_bodies(seed: int = 0, count: int = 60) -> list[bytes]:
    """Generated bodies, mostly malformed: deep nesting, wrong types in every field, odd bytes."""
    rng = random.Random(seed)
    values = [None, True, 1, -1, 2**80, 1.5, float("inf"), "x", "", [], {}, [1, "a"], {"a": 1}]
    fields = [
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
        "stream",
        "n",
        "user",
    ]
    bodies = [
        b"{" + b'"a":' * 1 + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "tiny", "messages": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        b"\xff\xfe not json",
        b"[]",
        b'"text"',
        b"",
        b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
    ]
    for _ in range(count):
        body = json.loads(_body())
        for name in rng.sample(fields, rng.randint(1, 3)):
            body[name] = rng.choice(values)
        if rng.random() < 0.3:
            body["messages"] = [
                {"role": rng.choice(["user", "tool", 3, None]), "content": rng.choice(values)}
            ]
        deep = rng.random() < 0.2
        if deep:
            body["messages"] = "DEEP"
        encoded = json.dumps(body).encode()
        if deep:  # written as text: the test's own parser would overflow on it too
            depth = rng.choice([10, 500, 5000])
            encoded = encoded.replace(b'"DEEP"', b"[" * depth + b"]" * depth)
        if encoded != _body():
            bodies.append(encoded)
    return bodies


def test_every_malformed_body_is_a_4xx_and_the_connection_stays_usable(server):
    """No 5xx, an OpenAI error body for each refusal, and the next request on the same keep-alive
    connection answered (a 500 used to close it: 100,000 nested brackets overflowed the parser)."""
    port, _, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for body in _bad_bodies():
        status, answer = _post(connection, body)
        assert status < 500, (status, body[:80])  # some generated bodies are valid after all: 200
        assert status == 200 or answer["error"]["message"], answer
        status, answer = _post(connection, _body(max_tokens=2))  # the same connection, still good
        assert status == 200, answer
    connection.close()


def test_a_request_without_max_tokens_gets_what_the_context_leaves(server, monkeypatch):
    """As vLLM: no max_tokens means the rest of the context, capped (here at 40); the demo model's
    256-token context once made every such request a 400."""
    port, model, engine = server
    monkeypatch.setattr(model, "stop_token_ids", lambda template="default": [])  # the whole budget
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for context in (1000, 60):  # the cap decides, then the context does
        monkeypatch.setattr(engine, "context", context)
        status, answer = _post(connection, _body())
        assert status == 200, answer
        usage = answer["usage"]
        assert usage["completion_tokens"] == min(40, context - usage["prompt_tokens"])
    monkeypatch.setattr(engine, "context", 30)  # the prompt fills it: a clean 400
    status, answer = _post(connection, _body())
    assert status == 400 and answer["error"]["code"] == "context_length_exceeded"
    connection.close()


def test_health_answers_head_and_nothing_needs_the_internet_or_skips_the_key():
    def call(connection, method: str, path: str, key: str | None = None) -> tuple[int, bytes]:
        connection.request(method, path, headers={"Authorization": f"Bearer {key}"} if key else {})
        response = connection.getresponse()
        return response.status, response.read()

    with serve_in_thread(create_app(tiny_vlm(), ServeConfig(name="tiny", api_key="k"))) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        assert call(connection, "HEAD", "/health") == (200, b"")
        assert call(connection, "GET", "/docs")[0] == 404 and call(connection, "GET", "/redoc")[0] == 404
        assert call(connection, "GET", "/openapi.json")[0] == 401
        status, schema = call(connection, "GET", "/openapi.json", key="k")
        assert status == 200 and "/v1/chat/completions" in json.loads(schema)["paths"]


def test_one_log_line_per_request(server, caplog):
    import logging

    port, _, _ = server
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    with caplog.at_level(logging.INFO, logger="fovea.infer.server"):
        assert _post(connection, _body(max_tokens=3))[0] == 200
        assert _post(connection, _body(max_tokens=3, messages=[{"role": "tool", "content": "x"}]))[0] == 400
        deadline = time.monotonic() + 5
        while len([r for r in caplog.records if r.getMessage().startswith("request ")]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    done, refused = sorted(
        (r.getMessage() for r in caplog.records if r.getMessage().startswith("request ")),
        key=len,
        reverse=True,
    )
    assert "status=200" in done and "output_tokens=3" in done
    for field in ("id=chatcmpl-", "prompt_tokens=", "images=0", "queue_s=", "ttft_s=", "total_s="):
        assert field in done, done
    assert "status=400" in refused and "id=chatcmpl-" in refused
    connection.close()


def test_sigterm_drains_then_ends_each_answer_cleanly_and_exits(tmp_path, monkeypatch):
    """5 long answers in flight (streamed and not): on SIGTERM every client gets a whole answer or a
    clean error (an SSE error event then [DONE], or a JSON 503), a new request gets a 503 at once,
    and the server is gone within the drain timeout plus 10 s."""
    import signal

    from fovea.infer.server import make_server

    model = fovea.load(tiny_vlm().save_pretrained(tmp_path / "model"))
    model.config.max_length = 3200
    monkeypatch.setattr(model, "stop_token_ids", lambda template="default": [])  # every answer is long
    server = make_server(model, ServeConfig(name="tiny", limits=Limits(max_tokens=LONG)), "127.0.0.1", 0, 1.0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    outcomes: dict[int, tuple] = {}

    def client(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = _body(max_tokens=LONG if i < 4 else 3, stream=i % 2 == 1)
        connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        outcomes[i] = (response.status, response.read().decode())

    clients = [threading.Thread(target=client, args=(i,)) for i in range(5)]
    for c in clients:
        c.start()
    time.sleep(1.0)  # all are decoding; the short one has finished
    start = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)
    late = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:  # a request after the signal: refused at once (or the listener is already closed)
        refused = _post(late, _body(max_tokens=2))
        assert refused[0] == 503 and refused[1]["error"]["code"] == "server_shutting_down"
    except (ConnectionError, OSError):
        pass
    for c in clients:
        c.join(timeout=20)
    thread.join(timeout=20)
    assert not thread.is_alive() and time.monotonic() - start < 1.0 + 10
    for i, (status, text) in outcomes.items():
        if i == 4:  # finished before the signal: a whole answer
            assert status == 200 and json.loads(text)["usage"]["completion_tokens"] == 3
        elif i % 2:  # streamed: its chunks, then an error event, then [DONE]
            assert status == 200 and "server_shutting_down" in text and text.rstrip().endswith("data: [DONE]")
        else:
            assert status == 503 and json.loads(text)["error"]["code"] == "server_shutting_down"


def test_text_and_bad_requests_never_wait_behind_images(server, monkeypatch):
    """4 requests whose images take 1.5 s each to decode fill the image lanes; a text-only request
    and a malformed one (role "tool") sent after them are answered before any image request is."""
    import base64
    import io
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    import fovea.infer.images as serve

    port, _, _ = server
    real = serve.decode_images

    def slow(sources, limits):  # a big image's decode: blocking, as it is
        time.sleep(1.5)
        return real(sources, limits)

    monkeypatch.setattr(serve, "decode_images", slow)
    png = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype("uint8")).save(png, "PNG")
    image = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()},
    }
    with_image = [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]
    finished: dict[str, float] = {}

    def send(name: str, body: bytes) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        status, _ = _post(connection, body)
        finished[name] = time.monotonic()
        assert status in (200, 400), (name, status)

    with ThreadPoolExecutor(10) as pool:
        jobs = [pool.submit(send, f"image{i}", _body(max_tokens=2, messages=with_image)) for i in range(4)]
        time.sleep(0.3)  # the image requests are decoding or queued for the pool
        jobs.append(pool.submit(send, "text", _body(max_tokens=2)))
        jobs.append(pool.submit(send, "tool", _body(messages=[{"role": "tool", "content": "x"}])))
        for job in jobs:
            job.result()
    first_image = min(t for name, t in finished.items() if name.startswith("image"))
    assert finished["text"] < first_image and finished["tool"] < first_image, finished


def test_big_blocks_go_back_to_the_system_under_glibc():
    """`make_server` sets glibc's mmap threshold, so freed images leave the heap (the burst
    benchmark: 200 MiB kept for good without it, 30 MiB with it)."""
    import platform

    from fovea.infer.server import give_big_blocks_back

    assert give_big_blocks_back() is (platform.libc_ver()[0] == "glibc")


def test_the_readme_serving_example_runs_as_written_against_the_demo_model(tmp_path):
    """The README's Python block under "## Serving", with only its address and image filled in,
    against the demo recipe's model (its context is 256 tokens: a default max_tokens of 256 would
    refuse every prompt) served as the README's command serves it."""
    import base64
    import re
    from pathlib import Path

    from fovea.train.build import build_model
    from fovea.train.recipe import load_recipe

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"## Serving\n.*?```python\n(.*?)```", readme, re.S).group(1)
    recipe = load_recipe(Path(fovea.__file__).parent / "recipes" / "demo.yaml")
    model = build_model(recipe.model)
    model.save_pretrained(tmp_path / "final")  # as `fovea serve --model .../final` names it
    model = fovea.load(tmp_path / "final")
    png = (Path(__file__).parents[1] / "examples" / "images" / "shapes.png").read_bytes()
    scope: dict = {}
    with serve_in_thread(create_app(model, ServeConfig(name="final", api_key="secret"))) as port:
        code = block.replace("http://127.0.0.1:8000/v1", f"http://127.0.0.1:{port}/v1").replace(
            "data:image/png;base64,...", "data:image/png;base64," + base64.b64encode(png).decode()
        )
        exec(compile(code, "README.md", "exec"), scope)  # as a user pastes it
    reply = scope["reply"]
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.prompt_tokens > 0
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens <= 256


def test_a_video_url_part_is_answered_as_model_chat_answers_it(server):
    """vLLM's ``video_url`` part, as a data URL: the frames the model's sampling picks (at most
    the server's max_video_frames), pooled; the same text as `model.chat(..., videos=[...])`.
    A second video, a broken one and a bad URL type are 400s naming the part."""
    import base64

    from test_video import make_video

    port, model, _ = server
    video = make_video()
    url = "data:video/mp4;base64," + base64.b64encode(video).decode()
    part = {"type": "video_url", "video_url": {"url": url}}
    content = [part, {"type": "text", "text": "What happens?"}]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    status, answer = _post(
        connection, _body(messages=[{"role": "user", "content": content}], max_tokens=6, temperature=0)
    )
    assert status == 200, answer
    expected = model.chat(
        [{"role": "user", "content": "<video>\nWhat happens?"}], videos=[video], max_new_tokens=6
    )
    assert answer["choices"][0]["message"]["content"] == expected

    broken = {
        "type": "video_url",
        "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(video[:900]).decode()},
    }
    cases = [
        ([part, part], "too_many_videos", "messages[0].content[1]"),
        ([broken], "invalid_video", "messages[0].content[0]"),
        ([{"type": "video_url", "video_url": {"url": 5}}], None, "messages[0].content[0]"),
    ]
    for parts, code, param in cases:
        status, answer = _post(connection, _body(messages=[{"role": "user", "content": parts}], max_tokens=2))
        assert status == 400 and answer["error"]["param"] == param and answer["error"]["code"] == code, answer
