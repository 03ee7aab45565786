"""Move a simulated device's values on a clock: the one loop every simulator shares."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol


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
