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
