"""From a device's config to its driver. A driver's library is imported only when a
configured device needs it (importing asyncua alone costs a process ~25 MB): an
OPC-UA-only gateway never loads pymodbus, a Modbus-only one never loads asyncua."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from drivers.base import Driver
from drivers.modbus.config import ModbusDevice
from drivers.mqtt.config import MqttDevice
from drivers.opcua.config import OpcUaDevice
from edge_agent.config import DeviceConfig

if TYPE_CHECKING:
    from drivers.modbus.bus import ModbusBuses


def open_driver(
    device: DeviceConfig,
    modbus_buses: ModbusBuses | None = None,
    *,
    gateway_ids: Collection[str] = (),
) -> Driver:
    """``modbus_buses``: one per agent run, so that Modbus devices on one bus share it.
    ``gateway_ids``: the ids of every device configured on the gateway; an MQTT entry that
    makes ids from topics (``"{id}"``) refuses to make one of these."""
    match device:
        case ModbusDevice():
            # a protocol's library loads only when a device uses it
            from drivers.modbus.driver import ModbusDriver  # noqa: PLC0415

            driver: Driver = ModbusDriver(device, modbus_buses)
            return driver
        case OpcUaDevice():
            # a protocol's library loads only when a device uses it
            from drivers.opcua.driver import OpcUaDriver  # noqa: PLC0415

            return OpcUaDriver(device)
        case MqttDevice():
            # a protocol's library loads only when a device uses it
            from drivers.mqtt.driver import MqttDriver  # noqa: PLC0415

            return MqttDriver(device, taken_ids=gateway_ids)
    raise TypeError(f"no driver for {type(device).__name__}")  # pragma: no cover


def open_drivers(devices: Sequence[DeviceConfig]) -> dict[str, Driver]:
    """One driver per device, by id, for one agent run: Modbus devices on one serial line
    or endpoint share it."""
    ids = [dev.id for dev in devices]  # an id taken from a topic must not be one of these
    buses: ModbusBuses | None = None
    if any(isinstance(dev, ModbusDevice) for dev in devices):
        # lazy: pymodbus is loaded only on a gateway with a Modbus device
        # a protocol's library loads only when a device uses it
        from drivers.modbus.bus import ModbusBuses  # noqa: PLC0415

        buses = ModbusBuses()
        # The driver reports every device failure once, in its own words, and counts the
        # rest; pymodbus would log each retry and failed connect again, at every poll.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    return {dev.id: open_driver(dev, buses, gateway_ids=ids) for dev in devices}


def point_units(device: DeviceConfig) -> list[tuple[str, str | None]]:
    return [(p.name, p.unit) for p in device.points]
