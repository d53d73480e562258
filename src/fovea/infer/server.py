"""`fovea serve`: an OpenAI-compatible chat server (``/v1/chat/completions``, ``/v1/models``,
``/health``) in front of the batching `Engine`.

Concurrent requests are batched together by the engine; streaming answers are Server-Sent
Events in OpenAI's chunk format. Every bad request gets a 4xx with OpenAI's error body and the
server keeps serving. It binds to 127.0.0.1 unless told otherwise; on shutdown uvicorn stops
accepting, in-flight requests finish, then the engine stops.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import FoveaError
from .engine import Engine, Request
from .requests import ApiError, Limits, parse_messages, sampling


@dataclass
class ServeConfig:
    name: str
    api_key: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 16
    max_wait: float = 0.01
    template: str | None = "default"
    """Chat template for every request (``"default"``: the model's own, see ``model.chat_format``)."""


def create_app(model, config: ServeConfig) -> FastAPI:
    engine = Engine(model, max_batch=config.max_batch, max_wait=config.max_wait)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.close)

    app = FastAPI(title="fovea", lifespan=lifespan)
    app.state.engine = engine

    def fail(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued": engine.queue.qsize()}

    @app.get("/v1/models")
    async def models(request: HttpRequest):
        try:
            _authorise(request, config)
        except ApiError as err:
            return fail(err)
        return {
            "object": "list",
            "data": [{"id": config.name, "object": "model", "created": 0, "owned_by": "fovea"}],
        }

    @app.post("/v1/chat/completions")
    async def completions(request: HttpRequest):
        return await _chat_completion(request, config, engine)

    return app


async def _chat_completion(request, config: ServeConfig, engine: Engine):
    """One /v1/chat/completions request: check it, queue it, answer (JSON or an SSE stream)."""
    try:
        _authorise(request, config)
        body = await _json_body(request, config.max_body_bytes)
        if body.get("model") != config.name:
            raise ApiError(
                404,
                f"model {body.get('model')!r} not found; this server has {config.name!r}",
                "model",
                "model_not_found",
            )
        messages, images = parse_messages(body.get("messages"), config.limits)
        options = sampling(body, config.limits)
    except ApiError as err:
        return JSONResponse(err.body(), status_code=err.status)
    events: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    engine.submit(
        Request(
            messages,
            images,
            **options,
            template=config.template,
            emit=lambda kind, value: loop.call_soon_threadsafe(events.put_nowait, (kind, value)),
        )
    )
    first = await events.get()  # the first event decides between a 4xx and a reply
    if first[0] == "error":
        err = _as_api_error(first[1])
        return JSONResponse(err.body(), status_code=err.status)
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": config.name}
    if body.get("stream"):
        return StreamingResponse(_sse(first, events, meta), media_type="text/event-stream")
    return await _complete(first, events, meta)


def _authorise(request, config: ServeConfig) -> None:
    if config.api_key is None:
        return
    header = request.headers.get("authorization", "")
    if header != f"Bearer {config.api_key}":
        raise ApiError(401, "missing or invalid API key (Authorization: Bearer ...)", None, "invalid_api_key")


async def _json_body(request, limit: int) -> dict:
    """The JSON body, at most `limit` bytes. A body somewhat over the limit is drained (not kept)
    so the client reads a clean 413 instead of a broken pipe; an absurd one is refused at once."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > 8 * limit:
        raise ApiError(413, f"request body larger than {limit} bytes", None, "body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise ApiError(413, f"request body larger than {limit} bytes", None, "body_too_large")
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"malformed JSON body ({err})", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the JSON body must be an object", None, "invalid_json")
    return body


def _as_api_error(err: object) -> ApiError:
    if isinstance(err, ApiError):
        return err
    if isinstance(err, (FoveaError, FileNotFoundError)):
        return ApiError(400, str(err), "messages")
    return ApiError(500, f"generation failed ({type(err).__name__})", None, "server_error", "server_error")


async def _complete(first, events: asyncio.Queue, meta: dict) -> dict:
    event = first
    while event[0] == "text":
        event = await events.get()
    if event[0] == "error":
        err = _as_api_error(event[1])
        return JSONResponse(err.body(), status_code=err.status)
    result = event[1]
    return {
        **meta,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text.strip()},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


async def _sse(first, events: asyncio.Queue, meta: dict):
    def chunk(delta: dict, finish: str | None = None) -> str:
        body = {
            **meta,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    event, started = first, False
    while event[0] == "text":
        text = event[1] if started else event[1].lstrip()  # as the non-streamed answer: no leading space
        if text:
            started = True
            yield chunk({"content": text})
        event = await events.get()
    if event[0] == "done":
        yield chunk({}, event[1].finish_reason)
    else:
        yield f"data: {json.dumps(_as_api_error(event[1]).body())}\n\n"
    yield "data: [DONE]\n\n"
