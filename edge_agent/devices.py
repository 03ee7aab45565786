"""From a device's config to its driver. A driver's library is imported only when a
configured device needs it (importing asyncua alone costs a process ~25 MB)."""

from __future__ import annotations

from drivers.base import Driver
from drivers.modbus.config import ModbusDevice
from edge_agent.config import DeviceConfig


def open_driver(device: DeviceConfig) -> Driver:
    match device:
        case ModbusDevice():
            from drivers.modbus.driver import ModbusDriver

            driver: Driver = ModbusDriver(device)
            return driver
    raise TypeError(f"no driver for {type(device).__name__}")  # pragma: no cover


def point_units(device: DeviceConfig) -> list[tuple[str, str | None]]:
    return [(p.name, p.unit) for p in device.points]
