"""A request's images on their way into the server: read, admitted, decoded and tiled, apart from
everything else.

1. **read** (`open_images`, in a pool of its own): data URLs and files read, remote images fetched,
   headers checked. Nothing is decoded, so each image's pixel count is known before it costs memory.
2. **admit** (`PixelBudget`): the request takes its pixels from the server's budget, waiting its turn
   (a full queue or a long wait is a 429). Decoded pixels never pass the budget: what is admitted
   is all that is decoded.
3. **decode and tile** (`decode_images`, then the model's image processor): one job per image in the
   image pool, or, for a request of at most `small_pixels`, in a lane of its own, so a burst of big
   images never holds up a thumbnail. The budget keeps that much room for small requests too.

The pixels go back to the budget once the request's images are tiles (the PIL images are dropped
then), however the request ends. A client that leaves cancels the coroutine; a decode already
running finishes in its thread before the pixels are given back.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from .budget import PixelBudget
from .requests import Limits, decode_images, open_images, pixels_of

READERS = 4
"""Threads that read and fetch images (mostly waiting on the network or the disk)."""


class ImageStage:
    def __init__(
        self,
        process,
        limits: Limits,
        pixels: int,
        workers: int = 2,
        small_pixels: int = 4_000_000,
        sampling=None,
    ):
        """`process` tiles decoded images (the model's `ImageProcessor`); `pixels` is the budget of
        decoded pixels held at once; `workers` threads decode big images; `sampling` picks a
        video's frames (the model's `VideoSampling`; a video's pixels are its chosen frames')."""
        self.process, self.limits, self.small_pixels, self.sampling = process, limits, small_pixels, sampling
        self.budget = PixelBudget(pixels, reserve=small_pixels)
        self.readers = ThreadPoolExecutor(READERS, thread_name_prefix="fovea-image-read")
        self.big = ThreadPoolExecutor(workers, thread_name_prefix="fovea-images")
        self.small = ThreadPoolExecutor(1, thread_name_prefix="fovea-small-images")
        self.decoding = 0
        """Requests whose images are being decoded or tiled now (for /metrics)."""

    async def prepare(self, sources: list[tuple[str, str]], sam=None):
        """The request's images (``check_messages``'s sources) as the model's processed tiles; with
        `sam` (a function of the decoded images: a segmenting model's SAM view), (tiles, its views)."""
        loop = asyncio.get_running_loop()
        opened = await loop.run_in_executor(self.readers, open_images, sources, self.limits, self.sampling)
        pixels = sum(pixels_of(item) for _, item in opened)
        await self.budget.acquire(pixels)
        self.decoding += 1
        job = asyncio.ensure_future(self._decode_and_tile(opened, pixels, sam))
        try:
            return await asyncio.shield(job)
        finally:  # also when cancelled (the client left): the pixels come back once the decode ends
            job.add_done_callback(lambda done: self._ended(done, pixels, loop))

    def _ended(self, job: asyncio.Future, pixels: int, loop) -> None:
        self.decoding -= 1
        if not job.cancelled():
            job.exception()  # seen: a cancelled request's failure is nobody's to report
        loop.create_task(self.budget.release(pixels))

    async def _decode_and_tile(self, opened: list, pixels: int, sam=None):
        loop = asyncio.get_running_loop()
        lane = self.small if pixels <= self.small_pixels else self.big
        decoded = await asyncio.gather(  # every decode ends before the pixels can go back
            *(loop.run_in_executor(lane, decode_images, [one], self.limits) for one in opened),
            return_exceptions=True,
        )
        failed = [result for result in decoded if isinstance(result, BaseException)]
        if failed:
            raise failed[0]
        pictures = [image for (image,) in decoded]
        tiles = await loop.run_in_executor(lane, self.process, pictures)
        if sam is None:
            return tiles
        return tiles, await loop.run_in_executor(lane, sam, pictures)

    def close(self) -> None:
        for pool in (self.readers, self.big, self.small):
            pool.shutdown(wait=False, cancel_futures=True)
