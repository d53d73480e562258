"""Remote images for `fovea serve` (``--allow-remote-images``): fetched, and all of a request's
images within one deadline, however slowly a host trickles its bytes — headers included; never
from loopback, private or link-local addresses unless ``--allow-private-image-hosts`` (the test
hosts here are loopback, so the fetching tests allow them)."""

from __future__ import annotations

import http.server
import io
import threading
import time

import pytest
from PIL import Image

from fovea.infer.requests import ApiError, Limits, parse_messages


class _Trickle(http.server.ThreadingHTTPServer):
    """Serves `png` a few bytes at a time, `pause` seconds apart — in its body or, before it, as
    an endless stream of headers — like a slow or hostile image host."""

    daemon_threads = True
    png, pause, phase = b"", 0.0, "body"

    def handle_error(self, request, client_address):  # the client hung up on us: expected
        pass


class _TrickleHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/missing.png":
            self.send_error(404)
            return
        data, pause = self.server.png, self.server.pause
        if self.server.phase == "headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            for i in range(1000):
                self.wfile.write(b"X-Slow-%d: 1\r\n" % i)
                self.wfile.flush()
                time.sleep(pause)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for i in range(0, len(data), 16):
            self.wfile.write(data[i : i + 16])
            self.wfile.flush()
            time.sleep(pause)

    def log_message(self, *args):
        pass


@pytest.fixture
def trickle(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # urllib would send 127.0.0.1 to a configured proxy
    server = _Trickle(("127.0.0.1", 0), _TrickleHandler)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    server.png = buf.getvalue()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/a.png"
    server.shutdown()
    server.server_close()


def _remote(url: str, n: int = 1) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}] * n}]


def test_remote_images_are_fetched(trickle):
    _, url = trickle
    messages, images = parse_messages(
        _remote(url, 2), Limits(allow_remote_images=True, private_image_hosts=True)
    )
    assert messages[0]["content"] == "<image>\n<image>\n" and [im.size for im in images] == [(8, 8)] * 2
    with pytest.raises(ApiError, match="HTTP 404") as info:
        parse_messages(
            _remote(url.replace("a.png", "missing.png")),
            Limits(allow_remote_images=True, private_image_hosts=True),
        )
    assert (info.value.status, info.value.code) == (400, "invalid_image")


@pytest.mark.parametrize("phase", ["body", "headers"])
def test_a_trickling_image_host_meets_the_deadline(trickle, phase):
    server, url = trickle
    server.pause, server.phase = 0.3, phase  # each read is quick; the whole would take minutes
    started = time.monotonic()
    with pytest.raises(ApiError) as info:
        parse_messages(
            _remote(url), Limits(allow_remote_images=True, private_image_hosts=True, fetch_seconds=1.0)
        )
    assert (info.value.status, info.value.code) == (400, "image_fetch_timeout")
    assert info.value.param == "messages[0].content[0]"
    assert time.monotonic() - started < 5  # about the 1 s deadline, not a per-read timeout's minutes


def test_the_deadline_is_for_all_images_of_a_request(trickle):
    server, url = trickle
    server.pause = 0.6 / (len(server.png) // 16 + 1)  # each image takes about 0.6 s of a 1.0 s budget
    with pytest.raises(ApiError) as info:
        parse_messages(
            _remote(url, 3), Limits(allow_remote_images=True, private_image_hosts=True, fetch_seconds=1.0)
        )
    assert info.value.code == "image_fetch_timeout"
    assert info.value.param in ("messages[0].content[1]", "messages[0].content[2]")


def test_a_loopback_image_host_is_refused_unless_allowed(trickle):
    _, url = trickle
    with pytest.raises(ApiError, match="loopback, private or reserved") as info:
        parse_messages(_remote(url), Limits(allow_remote_images=True))
    assert (info.value.status, info.value.code) == (403, "image_host_not_allowed")
    assert info.value.param == "messages[0].content[0]"


@pytest.mark.parametrize(
    ("address", "private"),
    [("127.0.0.1", True), ("10.1.2.3", True), ("192.168.0.9", True), ("169.254.169.254", True),
     ("0.0.0.0", True), ("::1", True), ("::ffff:127.0.0.1", True), ("fe80::1%eth0", True),
     ("fd00::5", True), ("8.8.8.8", False), ("2606:4700:4700::1111", False)],
)  # fmt: skip
def test_which_addresses_count_as_private(address, private):
    from fovea.infer.requests import _is_private

    assert _is_private(address) is private
