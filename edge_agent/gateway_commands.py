"""The gateway's own commands from the center: ``ping``, ``read``, ``write``, ``restart``
(names and shapes in ``contract/gateway_commands.py``). They arrive through the command
channel (``commands.py``), which has checked the signature, the expiry and replay.

- ``read`` reads the device now through its driver, as a poll does (the driver's own
  lock keeps it from interleaving with the poll; its timeout and a bound of our own);
- ``write`` goes through the one guarded write of the agent, the one rule actions use
  (``AlarmService.write_point``): a device and point of the config only, the driver
  refusing a read-only point and a value that does not fit, a bounded wait; every write
  asked for is logged with who asked, done or refused;
- ``restart`` answers first, then asks the run to stop in its usual order (the outbox
  committed and closed: nothing lost), after which ``edge-agent run`` exits with
  ``RESTART_EXIT_CODE`` for the service manager to start it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from drivers.base import DeviceUnavailable, Driver, DriverError
from edge_agent.config import DeviceConfig
from edge_agent.contract.gateway_commands import (
    GATEWAY_COMMANDS,
    PING,
    READ,
    RESTART,
    RESTART_EXIT_CODE,
    WRITE,
    PointRef,
    ping_args,
    read_args,
    restart_args,
    write_args,
)
from edge_agent.outbox import OutboxGauge

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 30
"""A bound on a ``read`` beyond the driver's own timeouts (a Modbus poll of many blocks)."""


class CommandFailed(ValueError):
    """The command was valid but could not be carried out (device down, write refused)."""


class PointWriter(Protocol):
    async def write_point(self, device: str, point: str, value: Any) -> str | None: ...


class GatewayCommands:
    COMMANDS = GATEWAY_COMMANDS

    def __init__(
        self,
        *,
        version: str,
        devices: Sequence[DeviceConfig],
        drivers: Mapping[str, Driver],
        outbox: OutboxGauge,
        writer: PointWriter,
        restart: Callable[[], None],
    ) -> None:
        self._version = version
        self._started = time.monotonic()
        self._points = {d.id: {p.name for p in d.points} for d in devices}
        self._drivers = drivers
        self._outbox = outbox
        self._writer = writer
        self._restart = restart
        self.restart_requested = False
        self.writes = 0
        self.writes_refused = 0

    async def command(self, name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        if name == PING:
            ping_args(args)
            return await self._ping()
        if name == READ:
            return await self._read(read_args(args))
        if name == WRITE:
            return await self._write(args)
        if name == RESTART:
            by = restart_args(args)
            log.warning("restart asked by %r: stopping, for the service manager to restart", by)
            self.restart_requested = True
            # after this reply is handed to the uplink (the channel replies as soon as
            # this returns): the stop publishes its goodbye after it, on the same session
            asyncio.get_running_loop().call_soon(self._restart)
            return {"restarting": True, "exit_code": RESTART_EXIT_CODE}
        raise KeyError(name)

    async def _ping(self) -> dict[str, Any]:
        stats = await self._outbox.stats()
        return {
            "agent_version": self._version,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "outbox_depth": stats.depth,
            "ts": time.time(),
        }

    def _known(self, ref: PointRef) -> Driver:
        points = self._points.get(ref.device)
        if points is None:
            raise CommandFailed(f"no device {ref.device!r} on this gateway")
        if ref.point not in points:
            raise CommandFailed(f"device {ref.device!r} has no point {ref.point!r}")
        return self._drivers[ref.device]

    async def _read(self, ref: PointRef) -> dict[str, Any]:
        driver = self._known(ref)
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                readings = await driver.read()
        except DeviceUnavailable as exc:
            raise CommandFailed(f"device {ref.device!r} unavailable: {exc.reason}") from None
        except TimeoutError:
            raise CommandFailed(f"device {ref.device!r}: no answer in {READ_TIMEOUT_S} s") from None
        except DriverError as exc:
            raise CommandFailed(f"device {ref.device!r}: {exc}") from None
        found = [r for r in readings if r.point == ref.point]
        # a driver for several devices (an MQTT topic filter) names each reading's device
        reading = next((r for r in found if r.device == ref.device), found[0] if found else None)
        if reading is None:
            raise CommandFailed(f"device {ref.device!r} returned no reading of {ref.point!r}")
        return {
            "device": ref.device,
            "point": ref.point,
            "value": reading.value,
            "unit": reading.unit,
            "quality": reading.quality.value,
            "ts": reading.ts,
            "reason": reading.reason,
        }

    async def _write(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        args = write_args(raw)
        target = f"{args.device}.{args.point}={args.value!r}"
        try:
            self._known(PointRef(args.device, args.point))
        except CommandFailed as exc:
            self.writes_refused += 1
            log.warning("write %s asked by %r refused: %s", target, args.by, exc)
            raise
        error = await self._writer.write_point(args.device, args.point, args.value)
        if error is not None:
            self.writes_refused += 1
            log.warning("write %s asked by %r refused: %s", target, args.by, error)
            raise CommandFailed(f"write refused: {error}")
        self.writes += 1
        log.warning("write %s asked by %r done", target, args.by)
        return {
            "device": args.device,
            "point": args.point,
            "value": args.value,
            "by": args.by,
            "ts": time.time(),
        }
