"""How many image pixels the server holds at once, across every request in flight.

Each request's decoded images stay in memory (and become tiles, then tower activations) until its
answer is done. A request takes its pixels from the budget before it is queued and gives them
back when it ends, however it ends. One that does not fit waits its turn, in arrival order; when
`max_waiting` requests already wait, or the wait passes `timeout` seconds, it gets a 429 — a
bounded queue, never unbounded memory. A request larger than the whole budget waits until it is
alone, so a big image is slow rather than refused. The last `reserve` pixels are for small requests
(at most `reserve` each): a burst of big images never leaves a thumbnail without room.
"""

from __future__ import annotations

import asyncio

from .requests import ApiError


class PixelBudget:
    def __init__(self, limit: int, max_waiting: int = 64, timeout: float = 30.0, reserve: int = 0):
        self.limit, self.max_waiting, self.timeout, self.reserve = limit, max_waiting, timeout, reserve
        self.used = 0
        self.waiting = 0
        self._changed = asyncio.Condition()

    def _fits(self, pixels: int) -> bool:
        room = self.limit if pixels <= self.reserve else self.limit - self.reserve
        return self.used == 0 or self.used + pixels <= room

    async def acquire(self, pixels: int) -> None:
        """Take `pixels` (waiting in turn); ApiError(429) when the queue is full or the wait too long."""
        async with self._changed:
            if not self._fits(pixels):
                await self._wait(pixels)
            self.used += pixels

    async def release(self, pixels: int) -> None:
        async with self._changed:
            self.used -= pixels
            self._changed.notify_all()

    async def _wait(self, pixels: int) -> None:
        if self.waiting >= self.max_waiting:
            raise _busy(f"{self.waiting} requests with images are already waiting")
        self.waiting += 1
        try:
            await asyncio.wait_for(self._changed.wait_for(lambda: self._fits(pixels)), self.timeout)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            raise _busy(f"no room for {pixels} pixels within {self.timeout:g} s") from None
        finally:
            self.waiting -= 1


def _busy(why: str) -> ApiError:
    return ApiError(
        429,
        f"the server is busy with images ({why}); retry later",
        None,
        "rate_limit_exceeded",
        "rate_limit_error",
    )
