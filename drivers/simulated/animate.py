"""Move a simulated device's values on a clock: the one loop every simulator shares."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping
from contextlib import suppress
from types import TracebackType
from typing import Any, Protocol, Self


class Served:
    """A simulator that serves between ``start()`` and ``stop()``; ``async with`` does both."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class Settable(Protocol):
    async def set(self, name: str, value: Any, /) -> None: ...


class Model(Protocol):
    def step(self) -> Mapping[str, Any]: ...


async def animate(
    device: Settable, model: Model, *, period_s: float = 1.0, ticks: int | None = None
) -> None:
    """Apply ``model.step()`` to ``device`` every ``period_s``, ``ticks`` times or forever."""
    done = 0
    while ticks is None or done < ticks:
        for name, value in model.step().items():
            await device.set(name, value)
        done += 1
        await asyncio.sleep(period_s)


def stop_on_signals() -> asyncio.Event:
    """An event set by Ctrl-C or SIGTERM: how every simulator's command line ends."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def until_stopped(stop: asyncio.Event, moving: list[asyncio.Task[None]]) -> None:
    """Serve until ``stop``, then end the value loops cleanly."""
    await stop.wait()
    for task in moving:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
