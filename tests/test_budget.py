"""The server's image-pixel budget: requests wait their turn for room, a full queue or a long wait is
a 429, and the room comes back when they end."""

from __future__ import annotations

import asyncio

import pytest

from fovea.infer.budget import PixelBudget
from fovea.infer.requests import ApiError


def test_a_request_that_does_not_fit_waits_for_room():
    async def scenario():
        budget = PixelBudget(100, max_waiting=4, timeout=5)
        await budget.acquire(80)
        late = asyncio.create_task(budget.acquire(50))
        await asyncio.sleep(0.05)
        assert not late.done() and budget.waiting == 1
        await budget.release(80)
        await asyncio.wait_for(late, 1)
        assert budget.used == 50
        await budget.acquire(500)  # larger than the whole budget: waits until alone
        raise AssertionError("unreachable: 50 are held")

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(asyncio.wait_for(scenario(), 2))


@pytest.mark.parametrize("max_waiting, timeout", [(0, 5.0), (4, 0.05)], ids=["queue-full", "waited-too-long"])
def test_no_room_in_time_is_a_429(max_waiting, timeout):
    async def scenario():
        budget = PixelBudget(100, max_waiting=max_waiting, timeout=timeout)
        await budget.acquire(100)
        with pytest.raises(ApiError) as err:
            await budget.acquire(1)
        assert err.value.status == 429 and err.value.code == "rate_limit_exceeded"
        assert budget.used == 100 and budget.waiting == 0

    asyncio.run(scenario())


# --- the image stage: admitted by pixel budget before anything is decoded -------------------


def _png_url(width: int, height: int) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class _Recorder:
    """Stands in for `decode_images`: records the pixels being decoded at once (the peak) and how
    many decodes ran; each image over 100 pixels takes `seconds`."""

    def __init__(self, seconds: float):
        import threading

        self.seconds, self.now, self.peak, self.calls = seconds, 0, 0, 0
        self._lock = threading.Lock()

    def __call__(self, opened, limits):
        import time

        from fovea.infer.requests import decode_images

        pixels = sum(image.width * image.height for _, image in opened)
        with self._lock:
            self.now += pixels
            self.peak, self.calls = max(self.peak, self.now), self.calls + 1
        time.sleep(self.seconds if pixels > 100 else 0)
        try:
            return decode_images(opened, limits)
        finally:
            with self._lock:
                self.now -= pixels


def _stage(monkeypatch, budget: int, small: int, seconds: float = 0.05):
    import fovea.infer.images as images
    from fovea.infer.requests import Limits

    recorder = _Recorder(seconds)
    monkeypatch.setattr(images, "decode_images", recorder)
    return images.ImageStage(
        lambda decoded: decoded, Limits(), budget, workers=4, small_pixels=small
    ), recorder


def test_decoded_pixels_never_pass_the_budget(monkeypatch):
    """Six requests of two 20x20 images (800 pixels each) against a budget of 2,000: at most two
    requests decode at once, whatever the four decode threads could take."""
    stage, recorder = _stage(monkeypatch, budget=2000, small=0)
    sources = [(_png_url(20, 20), f"image{i}", "image") for i in range(2)]

    async def scenario():
        return await asyncio.gather(*(stage.prepare(sources) for _ in range(6)))

    results = asyncio.run(scenario())
    stage.close()
    assert [len(r) for r in results] == [2] * 6 and recorder.calls == 12
    assert recorder.peak == 1600 and stage.budget.used == 0


def test_a_small_image_passes_while_big_ones_hold_the_budget(monkeypatch):
    """Big requests may fill the budget up to its reserve for small ones: a 10x10 request goes
    through at once, while the next big one waits."""
    stage, recorder = _stage(monkeypatch, budget=1000, small=100, seconds=1.0)
    big, small = [(_png_url(30, 30), "big", "image")], [(_png_url(10, 10), "small", "image")]

    async def scenario():
        first = asyncio.create_task(stage.prepare(big))
        await asyncio.sleep(0.3)  # it holds 900 of 1000 pixels, decoding for a second
        second = asyncio.create_task(stage.prepare(big))
        await asyncio.wait_for(stage.prepare(small), 0.6)  # no wait for the big ones
        assert not first.done() and stage.budget.waiting == 1
        await asyncio.gather(first, second)

    asyncio.run(scenario())
    stage.close()
    assert stage.budget.used == 0 and recorder.calls == 3


def test_a_cancelled_request_gives_its_pixels_back_once_its_decode_ends(monkeypatch):
    stage, recorder = _stage(monkeypatch, budget=1000, small=0, seconds=0.5)

    async def scenario():
        task = asyncio.create_task(stage.prepare([(_png_url(20, 20), "image", "image")]))
        await asyncio.sleep(0.2)
        task.cancel()  # the client left while its image was decoding
        await asyncio.sleep(0.05)
        assert stage.budget.used == 400  # still decoding in its thread: still counted
        await asyncio.sleep(0.6)
        assert stage.budget.used == 0 and recorder.now == 0

    asyncio.run(scenario())
    stage.close()
