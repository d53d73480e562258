"""Turning an OpenAI chat request's messages into fovea messages and images — and every way they
can be wrong. The other fields of the request are checked in `request_fields`.

Errors are `ApiError`s carrying the HTTP status and OpenAI's error body
(``{"error": {"message", "type", "param", "code"}}``), so the server answers every bad request
with the right 4xx and keeps serving. Three stages, so the server can put each where it belongs:
`check_messages` (cheap, no image touched), `open_images` (bytes read or fetched, headers read and
checked: blocking, but no pixel decoded) and `decode_images` (the costly part). `parse_messages`
runs all three.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import ipaddress
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ImageError
from ..imaging.io import load_image, open_image
from ..imaging.video import Probe, VideoError, VideoSampling, load_video, probe_video


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    max_images: int = 8
    max_pixels: int = 16_000_000
    max_tokens: int = 1024
    default_max_tokens: int | None = None
    """A request without max_tokens gets what the context leaves after its prompt, capped by this
    (None: by `max_tokens`), as vLLM does."""
    max_image_bytes: int = 20 * 1024 * 1024
    max_videos: int = 1
    """``video_url`` parts per request (vLLM's default limit too)."""
    max_video_bytes: int = 32 * 1024 * 1024
    max_video_frames: int = 32
    """Frames taken from a video at most (fewer when the model's sampling takes fewer)."""
    allow_remote_images: bool = False
    private_image_hosts: bool = False
    """Fetch remote images from loopback, private, link-local and reserved addresses too. Off by
    default: a request could otherwise make the server read its own network (an admin page, a
    cloud metadata service at 169.254.169.254). Checked on every connection, redirects included,
    against the address actually connected to, so a name that resolves late cannot slip past."""
    image_dir: Path | None = None
    fetch_seconds: float = 20.0
    """All remote images of one request must arrive within this many seconds of its parsing
    starting — one deadline for the request, not per read, so a server that trickles bytes
    cannot hold a worker thread for long."""


@dataclass
class _Parse:
    """One request's parsing state: its limits, its images so far (sources while checking), its
    remote-fetch deadline (while decoding)."""

    limits: Limits
    deadline: float  # time.monotonic()
    images: list = field(default_factory=list)


def parse_messages(raw: object, limits: Limits) -> tuple[list[dict], list]:
    """OpenAI messages -> (fovea messages with <image> tags, decoded images (and videos' frame
    lists) in order)."""
    messages, sources = check_messages(raw, limits)
    return messages, decode_images(open_images(sources, limits), limits)


@dataclass
class OpenedVideo:
    """A request's video, read and probed (its chosen frames and their size known), not decoded."""

    data: bytes
    probe: Probe
    sampling: VideoSampling


def pixels_of(opened) -> int:
    """Decoded pixels an opened image or video will take."""
    return opened.probe.pixels if isinstance(opened, OpenedVideo) else opened.width * opened.height


def check_messages(raw: object, limits: Limits) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """The messages checked without decoding or fetching anything: (fovea messages with an
    <image> tag per image or video, each one's (url, where, "image" or "video") in order). Cheap,
    so the server runs it on its event loop and a bad or text-only request never waits behind
    others' images."""
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    parse = _Parse(limits, 0.0)
    messages = [_message(message, f"messages[{i}]", parse) for i, message in enumerate(raw)]
    return messages, parse.images


def open_images(
    sources: list[tuple[str, str, str]], limits: Limits, sampling: VideoSampling | None = None
) -> list[tuple[str, object]]:
    """Each image or video of `check_messages` as (where, a PIL image opened but not decoded, or
    an `OpenedVideo`): data URLs and files read, remote ones fetched under one deadline for the
    request (from now), every header checked against the limits. Blocking, for a worker thread;
    nothing is decoded. Videos are sampled by `sampling`, at most `max_video_frames` frames."""
    parse = _Parse(limits, time.monotonic() + limits.fetch_seconds)
    base, cap = sampling or VideoSampling(max_frames=0), limits.max_video_frames
    sampling = replace(base, max_frames=min(base.max_frames or cap, cap))  # 0: no bound of its own
    return [(where, _open(url, where, parse, kind, sampling)) for url, where, kind in sources]


def decode_images(opened: list[tuple[str, object]], limits: Limits) -> list:
    """The images of `open_images`, decoded to RGB (a video: its chosen frames, a list): the costly
    part, for a worker thread."""
    return [_decoded(item, where, limits) for where, item in opened]


def _message(message: object, where: str, parse: _Parse) -> dict:
    if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
        raise ApiError(400, f"{where} needs a role of system, user or assistant", f"{where}.role")
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(_part(part, f"{where}.content[{j}]", parse) for j, part in enumerate(content))
    else:
        raise ApiError(400, f"{where}.content must be text or a list of parts", f"{where}.content")
    if not is_unicode(text):
        raise ApiError(
            400,
            f"{where}: the text holds a lone surrogate (\\ud800-\\udfff), which is not a character "
            "and cannot be tokenised",
            f"{where}.content",
            "invalid_text",
        )
    return {"role": message["role"], "content": text}


def is_unicode(text: str) -> bool:
    """False when `text` holds a lone surrogate: JSON's "\\ud800" escape decodes to one, and a
    tokenizer cannot encode it (it has no UTF-8 form)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _part(part: object, where: str, parse: _Parse) -> str:
    if not isinstance(part, dict):
        raise ApiError(400, f"{where} must be an object", where)
    if part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    if part.get("type") == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise ApiError(400, f"{where}.image_url.url must be a string", where)
        if len(parse.images) >= parse.limits.max_images:
            raise ApiError(
                400,
                f"too many images: at most {parse.limits.max_images} per request",
                where,
                "too_many_images",
            )
        parse.images.append((url, where, "image"))  # decoded later, off the event loop (`decode_images`)
        return "<image>\n"
    if part.get("type") == "video_url":  # vLLM's part: one pooled item, in the image placeholders' order
        url = part.get("video_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise ApiError(400, f"{where}.video_url.url must be a string", where)
        if sum(kind == "video" for *_, kind in parse.images) >= parse.limits.max_videos:
            message = f"too many videos: at most {parse.limits.max_videos} per request"
            raise ApiError(400, message, where, "too_many_videos")
        parse.images.append((url, where, "video"))
        return "<image>\n"
    raise ApiError(400, f"{where}: unsupported content part (text, image_url or video_url)", where)


def _open(url: str, where: str, parse: _Parse, kind: str, sampling: VideoSampling):
    video = kind == "video"
    data = _image_bytes(url, where, parse, parse.limits.max_video_bytes if video else None)
    try:
        if video:
            return OpenedVideo(data, probe_video(data, sampling), sampling)
        return open_image(data, max_pixels=parse.limits.max_pixels)
    except (ImageError, VideoError) as err:
        raise ApiError(400, f"{where}: {err}", where, f"invalid_{kind}") from None


def _decoded(item, where: str, limits: Limits):
    try:
        if isinstance(item, OpenedVideo):
            return load_video(item.data, item.sampling).images
        return load_image(item, max_pixels=limits.max_pixels)
    except (ImageError, VideoError) as err:
        kind = "video" if isinstance(item, OpenedVideo) else "image"
        raise ApiError(400, f"{where}: {err}", where, f"invalid_{kind}") from None


def _image_bytes(url: str, where: str, parse: _Parse, limit: int | None = None) -> bytes:
    """An image's (or, with its `limit`, a video's) bytes, from a data URL, a fetch or a file."""
    limits = parse.limits
    limit = limit or limits.max_image_bytes
    if url.startswith("data:"):
        data = _data_url(url, where)
    elif url.startswith(("http://", "https://")):
        if not limits.allow_remote_images:
            raise ApiError(
                400, f"{where}: remote image URLs are disabled (serve with --allow-remote-images)", where
            )
        data = _fetch(url, where, parse, limit)
    else:
        data = _local_file(url, where, limits, limit)
    if len(data) > limit:
        raise ApiError(413, f"{where}: larger than {limit} bytes", where, "image_too_large")
    return data


def _data_url(url: str, where: str) -> bytes:
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise ApiError(400, f"{where}: data URLs must be base64", where, "invalid_image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: invalid base64 image data", where, "invalid_image") from None


def _fetch(url: str, where: str, parse: _Parse, limit: int) -> bytes:
    """A remote image, read in chunks, all before the request's deadline. A timer shuts the
    sockets down at the deadline: urlopen's timeout bounds each socket operation, not the whole
    exchange, and http.client reads the status line and headers in loops of its own."""
    seconds = parse.deadline - time.monotonic()
    if seconds <= 0:
        raise _late(where, parse.limits)
    watch = _Watch(parse.limits.private_image_hosts)
    timer = threading.Timer(seconds, watch.shut)
    timer.daemon = True
    timer.start()
    try:
        with watch.opener().open(url, timeout=seconds) as response:
            data = _read_chunks(response, limit, parse.deadline)
    except (OSError, ValueError, http.client.HTTPException) as err:  # ValueError: a malformed URL
        if isinstance(err, _PrivateHost) or isinstance(getattr(err, "reason", None), _PrivateHost):
            raise ApiError(
                403,
                f"{where}: the image host is a loopback, private or reserved address "
                "(serve with --allow-private-image-hosts to fetch from it)",
                where,
                "image_host_not_allowed",
            ) from None
        if watch.expired or time.monotonic() >= parse.deadline:
            raise _late(where, parse.limits) from None
        detail = f"HTTP {err.code}" if isinstance(err, urllib.error.HTTPError) else type(err).__name__
        raise ApiError(400, f"{where}: cannot fetch image ({detail})", where, "invalid_image") from None
    finally:
        timer.cancel()
    if watch.expired or data is None:  # a shut socket reads as the end of the data
        raise _late(where, parse.limits)
    return data


def _read_chunks(response, limit: int, deadline: float) -> bytes | None:
    """At most `limit` + 1 bytes (one over says: too large); None when the deadline passed."""
    chunks, size = [], 0
    while size <= limit:
        if time.monotonic() >= deadline:
            return None
        chunk = response.read1(64 * 1024)  # read1: one socket read, so the deadline is checked often
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _late(where: str, limits: Limits) -> ApiError:
    return ApiError(
        400,
        f"{where}: the remote images of this request took over {limits.fetch_seconds:g} s to fetch",
        where,
        "image_fetch_timeout",
    )


class _PrivateHost(OSError):
    """A fetch connected to an address the server's limits keep remote images away from."""


def _is_private(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone index is not part of it
    ip = ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


class _Watch:
    """The sockets of one fetch (a redirect opens another), so a timer can shut them down; each
    connection's peer is checked against the private-address rule first."""

    def __init__(self, private_ok: bool = False):
        self.sockets: list[socket.socket] = []
        self.expired = False
        self.private_ok = private_ok

    def shut(self) -> None:
        self.expired = True
        for sock in self.sockets:
            with contextlib.suppress(OSError):  # already closed: the fetch ended meanwhile
                sock.shutdown(socket.SHUT_RDWR)

    def opener(self) -> urllib.request.OpenerDirector:
        watch = self

        def watched(base):
            class Connection(base):
                def connect(self):
                    super().connect()
                    watch.sockets.append(self.sock)  # after HTTPS wraps it: the TLS socket
                    if not watch.private_ok and _is_private(self.sock.getpeername()[0]):
                        self.sock.close()
                        raise _PrivateHost(self.sock)
                    if watch.expired:  # a redirect's connection, opened as the timer fired
                        watch.shut()

            return Connection

        class Http(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(watched(http.client.HTTPConnection), req)

        class Https(urllib.request.HTTPSHandler):
            def https_open(self, req):  # no context: http.client's default, as urllib's own
                return self.do_open(watched(http.client.HTTPSConnection), req)

        return urllib.request.build_opener(Http, Https)


def _local_file(url: str, where: str, limits: Limits, limit: int) -> bytes:
    if limits.image_dir is None:
        raise ApiError(400, f"{where}: local image paths are disabled (serve with --image-dir DIR)", where)
    try:
        root = limits.image_dir.resolve()
        path = (root / url.removeprefix("file://")).resolve()
        if root not in path.parents:
            raise ApiError(
                403, f"{where}: image path is outside the allowed directory", where, "path_not_allowed"
            )
        if not path.is_file():
            raise ApiError(
                400, f"{where}: no such image file in the allowed directory", where, "invalid_image"
            )
        with path.open("rb") as file:
            return file.read(limit + 1)  # one byte over says: too large
    except PermissionError:
        raise ApiError(403, f"{where}: the image file is not readable", where, "path_not_allowed") from None
    # NUL bytes (ValueError), over-long names (OSError), symlink loops (RuntimeError before Python
    # 3.13, OSError after): the client named a bad path, which is a 4xx, not a server error
    except (OSError, ValueError, RuntimeError) as err:
        raise ApiError(
            400, f"{where}: cannot read the image path ({type(err).__name__})", where, "invalid_image"
        ) from None
