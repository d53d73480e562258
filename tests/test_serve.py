"""`fovea serve` with the official openai client: answers equal the Python API, streaming and
not, with one and several images; bad requests get the right 4xx and the server keeps serving;
every field is checked before a request is queued and one fovea does not implement is refused;
a client that leaves cancels its request; 16 concurrent clients all succeed and are batched."""

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
    (allowed / "loop.png").symlink_to(allowed / "loop.png")  # resolving it never ends
    (allowed / "a.png").symlink_to(allowed / "b.png")
    (allowed / "b.png").symlink_to(allowed / "a.png")
    (allowed / "folder.png").mkdir()
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


def _post(url: str, body, key: str | None = KEY, content_type: str = "application/json") -> Reply:
    headers = {"content-type": content_type, **({"Authorization": f"Bearer {key}"} if key else {})}
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
    original = engine._sample

    def spy():
        seen.append(len(engine.running.sequences))  # sequences decoded in this step
        return original()

    engine._sample = spy
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
        engine._sample = original
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
        (["--max-inflight-mpixels", "-1"], "--max-inflight-mpixels -1.0: expected a positive number"),
        (["--image-workers", "0"], "--image-workers 0: expected a positive number"),
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


# --- every field checked before a request is queued ------------------------------------------


@pytest.fixture
def submitted(server, monkeypatch):
    """The engine `Request`s the server submits, in order (they still reach the engine)."""
    engine, seen = server[2].state.engine, []
    original = engine.submit
    monkeypatch.setattr(engine, "submit", lambda request: (seen.append(request), original(request)))
    return seen


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": True}, "max_tokens"),  # was read as 1
        ({"max_tokens": None, "max_completion_tokens": True}, "max_completion_tokens"),
        ({"max_tokens": 4.0}, "max_tokens"),
        ({"max_tokens": 4, "max_completion_tokens": 5}, "max_completion_tokens"),
        ({"stream": "false"}, "stream"),  # was streamed
        ({"stream": 0}, "stream"),
        ({"temperature": True}, "temperature"),
        ({"temperature": "0.5"}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),  # Python's json reads NaN
        ({"top_p": True}, "top_p"),
        ({"top_p": 0}, "top_p"),
        ({"seed": True}, "seed"),
        ({"seed": 2**64}, "seed"),  # overflowed inside the engine and failed its whole batch
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"user": 5}, "user"),
        ({"n": 2}, "n"),
        ({"n": 0}, "n"),
        ({"n": "x"}, "n"),
        ({"n": True}, "n"),
        ({"stop": ""}, "stop"),
        ({"stop": ["a", ""]}, "stop"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 5}, "stop"),
        ({"stop": ["a", 3]}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream, as OpenAI
        ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
        ({"stream": True, "stream_options": {"continuous_usage_stats": True}}, "stream_options"),
        ({"stream": True, "stream_options": [True]}, "stream_options"),
        ({"model": 5}, "model"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_badly_typed_fields_are_400_naming_the_field(server, submitted, fields, param):
    url, _, _ = server
    response = _post(url, {**_msg("hi"), **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and param in error["message"]
    assert param != "n" or "not supported" in error["message"]
    assert not submitted  # refused before it was queued


UNSUPPORTED = {
    "logprobs": True,
    "top_logprobs": 2,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "auto",
    "functions": [{"name": "f", "parameters": {}}],
    "function_call": "auto",
    "response_format": {"type": "json_object"},
    "logit_bias": {"1": 5},
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "audio": {"voice": "alloy", "format": "wav"},
    "modalities": ["text", "audio"],
    "reasoning_effort": "low",
    "prediction": {"type": "content", "content": "x"},
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_fields_are_400_never_dropped(server, submitted, name):
    url, _, _ = server
    response = _post(url, {**_msg("hi"), name: UNSUPPORTED[name]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert f"unsupported field {name!r}" in error["message"]
    assert error["param"] == name and error["code"] == "unsupported_field" and not submitted


def test_unsupported_field_through_the_openai_client(server):
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        _client(server[0]).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, logprobs=True
        )
    assert info.value.param == "logprobs" and "unsupported field 'logprobs'" in info.value.message


def test_accepted_fields_reach_the_engine_checked(server, submitted):
    url, _, _ = server
    client = _client(url)
    messages = [{"role": "user", "content": "hi"}]
    create = client.chat.completions.create
    create(model="tiny", messages=messages, max_tokens=5, stop=["zz", "yy"], n=1, user="me", seed=2**63 - 1)
    create(model="tiny", messages=messages, max_completion_tokens=6, stop="zz")
    # both broke sampling for the whole batch (inf/NaN probabilities; a float32 top_p of 0)
    create(model="tiny", messages=messages, max_tokens=4, temperature=1e-300)
    create(model="tiny", messages=messages, max_tokens=4, temperature=1.0, top_p=1e-300)
    nulls = dict.fromkeys(["temperature", "top_p", "seed", "stop", "n", "stream", "user", "max_tokens"])
    assert _post(url, {**_msg("hi"), **nulls}).status_code == 200  # null: not given, as OpenAI's schema
    first, second, tiny_t, tiny_p, defaults = submitted
    assert (first.stop, first.max_tokens, first.seed) == (("zz", "yy"), 5, 2**63 - 1)
    assert (second.stop, second.max_tokens) == (("zz",), 6)
    assert tiny_t.temperature == 0.0 and tiny_p.temperature == 0.0
    assert (defaults.temperature, defaults.top_p, defaults.seed, defaults.stop) == (1.0, 1.0, None, ())
    assert not any(r.cancelled.is_set() for r in submitted)  # answered, not abandoned


def test_stream_options_include_usage(server, submitted):
    client = _client(server[0])
    kwargs = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    reply = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == reply.usage.model_dump()
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert not submitted[-1].cancelled.is_set()


@pytest.mark.parametrize(
    ("messages", "where"),
    [
        ([{"role": "user", "content": "a\ud800b"}], "messages[0]"),
        (
            [
                {"role": "system", "content": "x"},
                {"role": "user", "content": [{"type": "text", "text": "\udfff"}]},
            ],
            "messages[1]",
        ),
    ],
)
def test_lone_surrogates_are_400_naming_the_message(server, submitted, messages, where):
    url, _, _ = server
    response = _post(url, {**_msg("hi"), "messages": messages})  # json.dumps writes "\ud800"
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert where in error["message"] and error["param"].startswith(where) and not submitted


# --- authentication and content types -------------------------------------------------------


def test_the_api_key_is_compared_in_constant_time(server, monkeypatch):
    import hmac

    url, _, _ = server
    calls, real = [], hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    assert _post(url, _msg("hi"), key="wrong").status_code == 401
    assert calls and calls[-1][1] == f"Bearer {KEY}".encode()
    assert _post(url, _msg("hi"), key="cl\xe9").status_code == 401  # not ASCII: still 401, not 500
    assert _post(url, _msg("hi")).status_code == 200


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/jsonp",
    ],
)
def test_only_json_bodies_are_read(server, content_type):
    url, _, _ = server
    response = _post(url, _msg("hi"), content_type=content_type)  # a web page's form post, say
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_no_content_type_is_415_and_parameters_are_allowed(server):
    import http.client

    url, _, _ = server
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(_msg("hi")), {"Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    assert response.status == 415 and json.loads(response.read())["error"]["type"]
    conn.close()
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        assert _post(url, _msg("hi"), content_type=content_type).status_code == 200


# --- --image-dir paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "a\x00b.png",
        "x" * 300 + ".png",
        "d/" * 3000 + "x.png",
        "loop.png",
        "a.png",
        "folder.png",
        "file://\x00",
    ],
    ids=["nul", "long name", "long path", "self loop", "symlink ring", "directory", "file url nul"],
)
def test_bad_image_paths_are_4xx_never_500(server, path):
    url, _, _ = server
    response = _post(url, _msg([{"type": "image_url", "image_url": {"url": path}}]))
    assert response.status_code in (400, 403), response.text
    assert response.json()["error"]["param"] == "messages[0].content[0]"


# --- images off the event loop (the remote-image deadline: test_serve_fetch.py) -------------


def test_health_answers_while_a_request_is_parsing(server, monkeypatch):
    import fovea.infer.images as serve

    url, _, _ = server
    started, real = threading.Event(), serve.decode_images

    def slow(sources, limits):  # a slow decode or fetch: blocking, as they are
        started.set()
        time.sleep(3)
        return real(sources, limits)

    monkeypatch.setattr(serve, "decode_images", slow)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_post, url, _msg(_content("hi", _images(1))))
        assert started.wait(30)
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # the parse takes 3 s
            assert json.loads(response.read())["status"] == "ok"
        assert pending.result(timeout=60).status_code == 200


# --- client disconnects cancel; engine errors -----------------------------------------------


def _fake_engine(app, monkeypatch, behaviour) -> list:
    """Replace the engine's submit: each request is played by `behaviour(request)` in a thread."""
    seen = []

    def submit(request):
        seen.append(request)
        threading.Thread(target=behaviour, args=(request,), daemon=True).start()

    monkeypatch.setattr(app.state.engine, "submit", submit)
    return seen


def _talk_until_cancelled(request):
    from fovea.infer.engine import Result

    for _ in range(500):  # 10 s at most
        if request.cancelled.is_set():
            return
        request.emit("text", " word")
        time.sleep(0.02)
    request.emit("done", Result("word " * 500, 3, 500, "length"))


def test_a_closed_stream_cancels_its_request(server, monkeypatch):
    url, _, app = server
    seen = _fake_engine(app, monkeypatch, _talk_until_cancelled)
    stream = _client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=64, stream=True
    )
    assert next(iter(stream)).choices[0].delta.role == "assistant"
    stream.close()  # the client goes away mid-answer
    assert seen[0].cancelled.wait(10)


def test_a_client_gone_before_the_answer_cancels_its_request(server, monkeypatch):
    import openai

    url, _, app = server

    def silent(request):  # a long prefill: no event yet
        request.cancelled.wait(10)

    seen = _fake_engine(app, monkeypatch, silent)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert seen[0].cancelled.wait(10)


def test_context_length_errors_are_400(server, monkeypatch):
    from fovea.errors import ContextLengthError

    url, _, app = server
    message = "prompt (100 tokens) + max_tokens (64) is over the model's context (128)"
    _fake_engine(app, monkeypatch, lambda request: request.emit("error", ContextLengthError(message)))
    for stream in (False, True):
        response = _post(url, {**_msg("hi"), "stream": stream})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"], error["message"]) == (
            "context_length_exceeded",
            "messages",
            message,
        )


def test_unsupported_fields_sent_with_values_that_ask_for_nothing_are_accepted(server):
    url, _, _ = server
    body = {**_msg("hi"), "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "tools": []}
    body.update(response_format={"type": "text"}, logit_bias={}, parallel_tool_calls=True, top_logprobs=None)
    assert _post(url, {k: v for k, v in body.items() if k != "top_logprobs"}).status_code == 200
    assert _post(url, {**_msg("hi"), "logprobs": 0}).status_code == 400  # 0 is not false


def test_every_request_gives_its_pixels_back(server):
    """Answered, refused and streamed requests all return their images' pixels to the budget."""
    url, _, app = server
    client = _client(url)
    images = _images(2)
    messages = [{"role": "user", "content": _content("Describe.", images)}]
    client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
    for _ in client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, stream=True):
        pass
    assert (
        _post(url, {**_msg(_content("x", images)), "max_tokens": 64, "template": "nope"}).status_code == 400
    )
    deadline = time.monotonic() + 10
    while app.state.images.budget.used and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.state.images.budget.used == 0
