"""Modbus driver (TCP, RTU, RTU over TCP): config models, type table, codec, planning, buses.

Only the config models are exported here: loading a config (the central service does
too) must not import pymodbus. The driver is ``drivers.modbus.driver.ModbusDriver``.
"""

from .config import ModbusConnection, ModbusDevice, ModbusPoint

__all__ = ["ModbusConnection", "ModbusDevice", "ModbusPoint"]
