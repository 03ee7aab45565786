"""The agent's stop cancels its tasks and goes on even when one swallows a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from edge_agent.runtime import cancel_all


async def stubborn(swallow: int) -> None:
    """Swallows its first ``swallow`` cancellations, as a library's wait_for can before 3.12."""
    for _ in range(swallow):
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
    await asyncio.sleep(30)


async def test_a_task_that_swallowed_a_cancel_is_cancelled_again() -> None:
    tasks = [asyncio.create_task(stubborn(n), name=f"t{n}") for n in (0, 1, 3)]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all(tasks, grace_s=10), 8)
    assert all(t.cancelled() for t in tasks)


async def test_a_task_that_never_stops_is_named_and_left_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    released = asyncio.Event()

    async def deaf() -> None:
        while not released.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await released.wait()

    forever = asyncio.create_task(deaf(), name="poll:lift-1")
    quick = asyncio.create_task(asyncio.sleep(30), name="health")
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.ERROR, logger="edge_agent.runtime"):
        await cancel_all([forever, quick], grace_s=1.5)
    assert loop.time() - started < 2.5
    assert quick.cancelled() and not forever.done()
    assert "stopping without poll:lift-1" in caplog.text
    released.set()
    await asyncio.wait_for(forever, 1)
