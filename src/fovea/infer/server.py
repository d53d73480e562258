"""`fovea serve`: an OpenAI-compatible chat server (``/v1/chat/completions``, ``/v1/models``,
``/health``, ``/metrics``) in front of the batching `Engine`.

Concurrent requests are batched together by the engine; streaming answers are Server-Sent
Events in OpenAI's chunk format. Every bad request gets a 4xx with OpenAI's error body and the
server keeps serving. It binds to 127.0.0.1 unless told otherwise; on SIGTERM or Ctrl-C it drains
(`make_server`): nothing new is accepted, answers in flight have a timeout to finish, then each one
left ends with a clean error and the engine stops.

Only JSON bodies are read (415 otherwise): a web page can post a form to a local server without
a CORS preflight, but not JSON. Messages are checked on the event loop (cheap); images are read,
admitted by pixel budget, decoded and tiled in pools of their own (`infer.images`), so `/health`,
text-only requests, thumbnails and refusals never wait behind others' big images. A client that
goes away, streaming or not, cancels its request at whatever stage it is in: the engine drops the
sequence at its next step instead of decoding for nobody. A
request without max_tokens gets what the context leaves (capped), as vLLM does. Every request ends
with one log line and is counted at ``/metrics`` (Prometheus). A segmenting model answers
``fovea_masks: true`` with a COCO RLE mask per ``[SEG]`` in the message (`_complete`). There is no /docs page (it loads scripts from a CDN); the schema is behind the
API key.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import ContextLengthError, FoveaError
from ..seg.head import sam_inputs
from ..seg.model import masks_rle
from .engine import Engine, Request
from .images import ImageStage
from .metrics import CONTENT_TYPE_LATEST, ServerMetrics
from .request_fields import Options, request_options
from .requests import ApiError, Limits, check_messages

logger = logging.getLogger(__name__)


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
    max_inflight_pixels: int = 256_000_000
    """Decoded image pixels held by all requests together (see `infer.images`)."""
    image_workers: int = 2
    """Threads that decode big images, apart from everything else (text-only and malformed requests
    never wait behind images; small images have a lane of their own)."""
    small_image_pixels: int = 4_000_000
    """A request with at most this many image pixels in all is small: decoded in its own lane."""


def create_app(model, config: ServeConfig) -> FastAPI:
    default = config.limits.default_max_tokens or config.limits.max_tokens
    engine = Engine(model, max_batch=config.max_batch, max_wait=config.max_wait, default_max_tokens=default)
    stage = ImageStage(
        model.processor.sample,
        config.limits,
        config.max_inflight_pixels,
        config.image_workers,
        config.small_image_pixels,
        model.config.video,
    )

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.close)
        stage.close()

    # no /docs or /redoc: their pages load scripts from a CDN; the schema is behind the API key
    app = FastAPI(title="fovea", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = ServerMetrics(engine, stage)
    app.state.engine, app.state.images, app.state.metrics = engine, stage, metrics

    def fail(err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued": engine.queue.qsize()}

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # load balancers' probe

    def keyed(answer):
        """A GET endpoint that answers `answer()` to a client with the API key, a 401 otherwise."""

        async def endpoint(request: HttpRequest):
            try:
                _authorise(request, config)
            except ApiError as err:
                return fail(err)
            return answer()

        return endpoint

    app.add_api_route("/openapi.json", keyed(app.openapi), methods=["GET"], include_in_schema=False)
    models = {
        "object": "list",
        "data": [{"id": config.name, "object": "model", "created": 0, "owned_by": "fovea"}],
    }
    app.add_api_route("/v1/models", keyed(lambda: models), methods=["GET"])
    scrape = lambda: Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)  # noqa: E731
    app.add_api_route("/metrics", keyed(scrape), methods=["GET"], include_in_schema=False)

    sam_view = _sam_view(model)

    @app.post("/v1/chat/completions")
    async def completions(http_request: HttpRequest):
        return await _chat_completion(http_request, config, engine, stage, metrics, sam_view)

    return app


def shutting_down() -> ApiError:
    return ApiError(
        503,
        "the server is shutting down; send the request again elsewhere",
        None,
        "server_shutting_down",
        "server_error",
    )


def make_server(model, config: ServeConfig, host: str, port: int, drain_timeout: float = 30.0):
    """uvicorn's server for `create_app`, draining on SIGTERM or Ctrl-C (see `DrainingServer`)."""
    import uvicorn

    give_big_blocks_back()
    app = create_app(model, config)
    settings = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=drain_timeout + 5
    )
    return _draining_server_class()(settings, app.state.engine, drain_timeout)


BIG_BLOCK = 4 * 2**20


def give_big_blocks_back() -> bool:
    """Have glibc map every allocation of `BIG_BLOCK` bytes or more on its own, so a freed image (Pillow
    holds one in 16 MiB blocks) goes back to the system at once. By default glibc raises that
    threshold after the first such free and keeps later ones in its heaps: after a burst of big
    images the server then held 200 MiB more than before, for good (benchmarks/serve_burst.py).
    False where the C library has no mallopt (not glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, BIG_BLOCK))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _draining_server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """On the first SIGTERM or Ctrl-C: stop accepting, answer every new request with a 503, let the
        answers in flight finish for `drain_timeout` seconds, then end each one left with a clean error
        (an SSE error event and ``[DONE]``, or a JSON 503); the engine does no step after that."""

        def __init__(self, settings, engine: Engine, drain_timeout: float):
            super().__init__(settings)
            self.engine, self.drain_timeout, self.draining = engine, drain_timeout, False

        def handle_exit(self, sig, frame) -> None:
            if not self.draining:
                self.draining = True
                self.engine.drain(shutting_down())
                timer = threading.Timer(self.drain_timeout, lambda: self.engine.abort(shutting_down()))
                timer.daemon = True
                timer.start()
            super().handle_exit(sig, frame)

    return DrainingServer


async def _chat_completion(
    http_request, config: ServeConfig, engine: Engine, stage: ImageStage, metrics, sam_view=None
):
    """One /v1/chat/completions request: check it, bring its images in, queue it, answer (JSON or an
    SSE stream). From the body's end on, a client that goes away cancels whatever stage it is in."""
    log = _Ending(f"chatcmpl-{uuid.uuid4().hex[:24]}", metrics)
    gone, views = None, None
    try:
        messages, sources, options = await _checked(http_request, config)
        view = _masks_asked(options, sources, sam_view)
        gone = asyncio.create_task(_disconnected(http_request))  # the body is read: only this can come
        images = await _unless_gone(gone, stage.prepare(sources, view)) if sources else []
        if view is not None:
            images, views = images
    except _ClientGone:
        log.ended(499, refused="client_gone")
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    except Exception as err:  # an ApiError, or the images' tiling failed: this request alone
        if gone is not None:
            gone.cancel()
        if not isinstance(err, (ApiError, FoveaError)):
            logger.exception("request %s: preparing its images failed", log.rid)
        err = _as_api_error(err)
        log.ended(err.status, refused=err.code)
        return JSONResponse(err.body(), status_code=err.status)
    events: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def emit(kind: str, value) -> None:  # called from the engine's thread
        if kind == "text" and log.first_text is None:
            log.first_text = time.monotonic()
        if kind in ("done", "error", "cancelled"):
            log.engine_ended(request, kind, value)
        loop.call_soon_threadsafe(events.put_nowait, (kind, value))

    request = Request(
        messages, images, **options.sampling, template=config.template, emit=emit, sam_images=views
    )
    engine.submit(request)
    gone.add_done_callback(lambda task: task.cancelled() or request.cancelled.set())
    try:
        first = await _next_event(events)  # decides between a 4xx and a reply
        if first[0] == "error":
            err = _as_api_error(first[1])
            return JSONResponse(err.body(), status_code=err.status)
        meta = {"id": log.rid, "created": int(time.time()), "model": config.name}
        if options.stream:  # Starlette watches a stream's client itself (see `_sse`)
            gone.cancel()
            stream = _sse(first, events, meta, request, options.include_usage)
            return StreamingResponse(stream, media_type="text/event-stream")
        return await _complete(first, events, meta)
    except _ClientGone:
        return Response(status_code=499)
    finally:
        gone.cancel()


async def _unless_gone(gone: asyncio.Task, work):
    """`work`'s result, or _ClientGone (with `work` cancelled) if the client leaves first."""
    task = asyncio.ensure_future(work)
    await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    raise _ClientGone


class _Ending:
    """How one request ended, told once: a log line (id, status, tokens, images, queue time, time
    to first token, total) and the /metrics counts. Times run from the request's arrival."""

    def __init__(self, rid: str, metrics: ServerMetrics):
        self.rid, self.metrics, self.start = rid, metrics, time.monotonic()
        self.first_text: float | None = None

    def engine_ended(self, request: Request, kind: str, value) -> None:
        status = {"done": 200, "cancelled": 499}.get(kind) or _as_api_error(value).status
        done = kind == "done"
        queue = request.started - request.submitted if request.started else None
        self.ended(
            status,
            prompt=value.prompt_tokens if done else 0,
            output=value.completion_tokens if done else 0,
            images=len(request.images),
            queue=queue,
        )

    def ended(self, status: int, prompt=0, output=0, images=0, queue=None, refused=None) -> None:
        total = time.monotonic() - self.start
        first = self.first_text - self.start if self.first_text is not None else None
        self.metrics.ended(status, prompt, output, queue, first, total)
        if refused is not None:
            logger.info("request id=%s status=%d refused=%s total_s=%.3f", self.rid, status, refused, total)
            return
        logger.info(
            "request id=%s status=%d prompt_tokens=%d output_tokens=%d images=%d queue_s=%s ttft_s=%s total_s=%.3f",
            self.rid, status, prompt, output, images, _seconds(queue), _seconds(first), total,
        )  # fmt: skip


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


async def _disconnected(http_request) -> None:
    """Return when the client disconnects (once the body is read, nothing else arrives before it)."""
    while (await http_request.receive())["type"] != "http.disconnect":
        pass


async def _checked(http_request, config: ServeConfig) -> tuple[list[dict], list, Options]:
    """Everything about a request that can be wrong before its images are read, cheapest check
    first; on the event loop (no image is touched)."""
    _authorise(http_request, config)
    body = await _json_body(http_request, config.max_body_bytes)
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "model must be a string naming the served model", "model")
    if model != config.name:
        raise ApiError(
            404, f"model {model!r} not found; this server has {config.name!r}", "model", "model_not_found"
        )
    options = request_options(body, config.limits)
    messages, sources = check_messages(body.get("messages"), config.limits)
    return messages, sources, options


def _authorise(request, config: ServeConfig) -> None:
    if config.api_key is None:
        return
    # bytes, since compare_digest refuses non-ASCII str; the header arrived as latin-1
    given = request.headers.get("authorization", "").encode("latin-1")
    # constant time: how long a wrong key takes to refuse must not tell how much of it was right
    if not hmac.compare_digest(given, f"Bearer {config.api_key}".encode()):
        raise ApiError(401, "missing or invalid API key (Authorization: Bearer ...)", None, "invalid_api_key")


async def _json_body(request, limit: int) -> dict:
    """The JSON body, at most `limit` bytes. A body somewhat over the limit is drained (not kept)
    so the client reads a clean 413 instead of a broken pipe; an absurd one is refused at once."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":  # a form post needs no CORS preflight: refuse it unread
        raise ApiError(
            415,
            f"the body must be JSON (Content-Type: application/json), got {media_type or 'no Content-Type'!r}",
            None,
            "unsupported_media_type",
        )
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
    except RecursionError:  # Python's parser recurses per level: thousands of [ or { overflow it
        raise ApiError(400, "the JSON body is nested too deeply", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the JSON body must be an object", None, "invalid_json")
    return body


def _as_api_error(err: object) -> ApiError:
    if isinstance(err, ApiError):
        return err
    if isinstance(err, ContextLengthError):
        return ApiError(400, str(err), "messages", "context_length_exceeded")
    if isinstance(err, (FoveaError, FileNotFoundError)):
        return ApiError(400, str(err), "messages")
    return ApiError(500, f"generation failed ({type(err).__name__})", None, "server_error", "server_error")


class _ClientGone(Exception):
    """The client disconnected while its request waited for the engine."""


async def _next_event(events: asyncio.Queue) -> tuple[str, object]:
    """The engine's next event for a request; _ClientGone once the engine says it was cancelled
    (its client left: the `_disconnected` watcher set the flag)."""
    event = await events.get()
    if event[0] == "cancelled":
        raise _ClientGone
    return event


async def _complete(first, events: asyncio.Queue, meta: dict):
    event = first
    while event[0] == "text":
        event = await _next_event(events)
    if event[0] == "error":
        err = _as_api_error(event[1])
        return JSONResponse(err.body(), status_code=err.status)
    result = event[1]
    message = {"role": "assistant", "content": result.text.strip()}
    if result.masks is not None:  # asked for (fovea_masks): RLE-encoded off the event loop
        message["fovea_masks"] = await asyncio.get_running_loop().run_in_executor(
            None, masks_rle, result.masks
        )
    return {
        **meta,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason}],
        "usage": _usage(result),
    }


def _sam_view(model):
    """SAM's view of decoded images for a segmenting model (None for any other)."""
    if model.config.seg is None:
        return None
    processor = model.config.seg.processor()
    return lambda pictures: sam_inputs(processor, pictures)


def _masks_asked(options: Options, sources: list, sam_view):
    """The SAM view to prepare when the request asks for masks (None when it does not); a request
    that asks a model that cannot, or gives no image to draw on, is a 400."""
    if not options.masks:
        return None
    if sam_view is None:
        raise ApiError(
            400, "fovea_masks: this model does not segment (no [SEG] token and SAM)", "fovea_masks"
        )
    if not sources or any(kind != "image" for *_, kind in sources):
        raise ApiError(400, "fovea_masks needs images to draw on, and no video", "fovea_masks")
    return sam_view


def _usage(result) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


async def _sse(first, events: asyncio.Queue, meta: dict, request: Request, include_usage: bool):
    """OpenAI's chunks, then ``[DONE]``. Starlette closes (or cancels) this generator when the
    client disconnects: the `finally` then cancels the request, unless the engine had finished."""
    extra = {"usage": None} if include_usage else {}  # OpenAI: every chunk has it, null until the last

    def chunk(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _event({**meta, "object": "chat.completion.chunk", "choices": [choice], **extra})

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        event, started = first, False
        while event[0] == "text":
            text = event[1] if started else event[1].lstrip()  # as the non-streamed answer: no leading space
            if text:
                started = True
                yield chunk({"content": text})
            event = await events.get()
        finished = True
        if event[0] == "done":
            yield chunk({}, event[1].finish_reason)
            if include_usage:
                yield _event(
                    {**meta, "object": "chat.completion.chunk", "choices": [], "usage": _usage(event[1])}
                )
        else:
            yield _event(_as_api_error(event[1]).body())
        yield "data: [DONE]\n\n"
    finally:
        if not finished:
            request.cancelled.set()


def _event(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"
