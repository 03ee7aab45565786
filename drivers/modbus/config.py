"""Config models of a Modbus device, checked against the type table in ``types``.

Cross-field problems (a ``float32`` on a coil table, a ``bit`` point without ``bit``) are
reported at the field that is wrong (``points.3.bit``), not at the point as a whole, so the
config loader can name the offending line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from drivers.base import DeviceBase, Frozen, PointBase, Violation, reject
from drivers.host_files import serial_port_problem

from .types import (
    BIT_TABLES,
    MAX_REGISTERS_PER_READ,
    TYPES,
    ModbusType,
    Order,
    Table,
    TypeName,
)

Framer = Literal["tcp", "rtu"]
Parity = Literal["N", "E", "O"]

_PARITY_WORDS = {"none": "N", "even": "E", "odd": "O"}
_SERIAL_ONLY = ("baudrate", "parity", "stopbits", "bytesize")


class ModbusConnection(Frozen):
    """Where a device is: a TCP endpoint (``host``) or a serial line (``serial``), and its unit.

    ``framer: rtu`` with ``host`` is RTU over TCP (a serial server passing RTU frames through
    a socket). Serial defaults are the Modbus serial-line specification's: 19200 baud, even
    parity, one stop bit, 8 data bits.
    """

    host: str | None = Field(default=None, min_length=1, description="Modbus TCP endpoint")
    port: int = Field(default=502, ge=1, le=65535)
    framer: Framer | None = Field(
        default=None, description="tcp (MBAP header) or rtu; default tcp with host, rtu on serial"
    )
    serial: str | None = Field(
        default=None, min_length=1, description="serial port for Modbus RTU, e.g. /dev/ttyUSB0"
    )
    baudrate: int = Field(default=19200, ge=300, le=4_000_000)
    parity: Parity = "E"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit: int = Field(
        default=1,
        ge=0,
        le=255,
        description="Modbus unit (slave) id: 1..247 on RTU; on TCP also 0 or 255 (the "
        "Modbus TCP guide's 'this device' id)",
    )
    timeout_s: float = Field(default=1.0, gt=0, le=60, description="per request and connect")
    retries: int = Field(default=1, ge=0, le=10, description="resends of a request that timed out")

    @field_validator("parity", mode="before")
    @classmethod
    def _parity_word(cls, value: object) -> object:
        """Technicians write ``even`` or ``e`` as often as ``E``."""
        if isinstance(value, str):
            return _PARITY_WORDS.get(value.lower(), value.upper())
        return value

    @property
    def framing(self) -> Framer:
        """The framer in force: as configured, else tcp with ``host`` and rtu on ``serial``."""
        return self.framer or ("tcp" if self.serial is None else "rtu")

    @property
    def bus(self) -> str:
        """The bus as a technician names it: the serial port, or ``host:port``."""
        return self.serial if self.serial is not None else f"{self.host}:{self.port}"

    @property
    def bus_settings(self) -> dict[str, object]:
        """What every device on this bus must agree on (a bus has one speed and framing)."""
        if self.serial is not None:
            return {name: getattr(self, name) for name in _SERIAL_ONLY}
        return {"framer": self.framing}

    @model_validator(mode="after")
    def _one_transport(self) -> Self:
        problems: list[Violation] = []
        given = self.model_fields_set
        if self.host is None and self.serial is None:
            message = "give host (Modbus TCP) or serial (a serial port, Modbus RTU)"
            problems.append((("host",), message, None))
        if self.host is not None and self.serial is not None:
            message = "host and serial exclude each other: a device is on one bus"
            problems.append((("serial",), message, self.serial))
        if self.serial is not None:
            if "port" in given:
                message = "port is the TCP port of host; a serial device has none"
                problems.append((("port",), message, self.port))
            if self.framer == "tcp":
                message = "a serial line carries rtu frames; framer tcp needs host"
                problems.append((("framer",), message, self.framer))
        elif self.host is not None:
            problems += [
                ((name,), f"{name} applies to a serial line (serial: ...), not to host", None)
                for name in _SERIAL_ONLY
                if name in given
            ]
        if self.bytesize != 8:
            message = "Modbus RTU frames carry 8 data bits; 7 is Modbus ASCII, not supported"
            problems.append((("bytesize",), message, self.bytesize))
        if self.framing == "rtu" and not 1 <= self.unit <= 247:
            message = (
                "unit 0 is a broadcast on RTU that no device answers; use 1..247"
                if self.unit == 0
                else "RTU units are 1..247 (248..255 are reserved); 0 and 255 are for TCP"
            )
            problems.append((("unit",), message, self.unit))
        reject(type(self).__name__, problems)
        return self


class ModbusPoint(PointBase):
    table: Table
    address: int = Field(ge=0, le=65535, description="0-based, as on the wire")
    type: TypeName
    order: Order = "ABCD"
    bit: int | None = Field(default=None, ge=0, le=15, description="for type bit; 0 = LSB")
    length: int | None = Field(
        default=None, ge=1, le=MAX_REGISTERS_PER_READ, description="registers, for type string"
    )
    scale: float = Field(default=1.0, allow_inf_nan=False)
    offset: float = Field(default=0.0, allow_inf_nan=False)

    @property
    def datatype(self) -> ModbusType:
        """This point's row of the type table."""
        return TYPES[self.type]

    @property
    def count(self) -> int:
        """Registers (or bits, on coil and discrete tables) the point occupies."""
        return self.datatype.registers or self.length or 0

    @model_validator(mode="after")
    def _fits_type(self) -> Self:
        dt = self.datatype
        problems: list[Violation] = []
        if self.table not in dt.tables:
            hint = "bool" if self.table in BIT_TABLES else "bit (with bit: n) or a register type"
            message = f"type {self.type} cannot live in table {self.table}; use {hint}"
            problems.append((("type",), message, self.type))
        if self.type == "bit" and self.bit is None:
            problems.append((("bit",), "type bit needs bit: 0..15", None))
        if self.type != "bit" and self.bit is not None:
            problems.append((("bit",), "only type bit takes bit", self.bit))
        if self.type == "string" and self.length is None:
            problems.append((("length",), "type string needs length (registers)", None))
        if self.type != "string" and self.length is not None:
            problems.append((("length",), "only type string takes length", self.length))
        if self.order not in dt.orders:
            allowed = " or ".join(sorted(dt.orders))
            message = f"order {self.order} does not apply to {self.type}; use {allowed}"
            problems.append((("order",), message, self.order))
        if not dt.numeric and (self.scale != 1 or self.offset != 0):
            message = f"scale and offset apply to numbers, not to {self.type}"
            problems.append((("scale",), message, self.scale))
        if self.scale == 0:
            problems.append((("scale",), "scale 0 would turn every value into the offset", 0))
        if self.address + self.count > 65536:
            message = f"bad address: {self.count} registers from {self.address} run past 65535"
            problems.append((("address",), message, self.address))
        reject(type(self).__name__, problems)
        return self


class ModbusDevice(DeviceBase):
    modbus: ModbusConnection
    points: list[ModbusPoint] = Field(min_length=1)
    max_gap: int = Field(
        default=16,
        ge=0,
        le=MAX_REGISTERS_PER_READ,
        description="unwanted registers a coalesced read may span to save a request",
    )
    no_gap_reads: bool = Field(default=False, description="never read registers no point uses")
    max_registers_per_read: int = Field(
        default=MAX_REGISTERS_PER_READ, ge=1, le=MAX_REGISTERS_PER_READ
    )

    def host_problems(self) -> list[Violation]:
        serial = self.modbus.serial
        problem = serial_port_problem(serial) if serial is not None else None
        return [] if problem is None else [(("modbus", "serial"), problem, serial)]

    @property
    def read_gap(self) -> int:
        """The hole a coalesced read may span: ``max_gap``, or 0 with ``no_gap_reads``."""
        return 0 if self.no_gap_reads else self.max_gap

    @model_validator(mode="after")
    def _points_fit(self) -> Self:
        problems: list[Violation] = []
        first: dict[str, int] = {}
        for i, point in enumerate(self.points):
            if point.name in first:
                message = (
                    f"duplicate point name {point.name!r} (first at points.{first[point.name]})"
                )
                problems.append((("points", i, "name"), message, point.name))
            first.setdefault(point.name, i)
            if point.table not in BIT_TABLES and point.count > self.max_registers_per_read:
                message = (
                    f"{point.count} registers do not fit one read "
                    f"(max_registers_per_read is {self.max_registers_per_read})"
                )
                problems.append((("points", i, "type"), message, point.type))
        reject(type(self).__name__, problems)
        return self


def bus_conflicts(devices: Iterable[object]) -> list[tuple[tuple[str | int, ...], str]]:
    """Devices on one bus that disagree on its settings, as ``(path, message)`` pairs.

    ``devices`` is a gateway's whole device list (other protocols are skipped), so paths
    are ``("devices", i, "modbus", field)``. Each device is checked against the first one
    on the same bus: one serial line has one speed and framing, one TCP endpoint one framer.
    """
    first: dict[str, tuple[int, dict[str, object]]] = {}
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for i, device in enumerate(devices):
        if not isinstance(device, ModbusDevice):
            continue
        conn = device.modbus
        j, settings = first.setdefault(conn.bus, (i, conn.bus_settings))
        for name, value in conn.bus_settings.items():
            if settings[name] != value:
                message = (
                    f"{conn.bus} has {name} {settings[name]} in devices[{j}]; "
                    f"devices on one bus must agree"
                )
                problems.append((("devices", i, "modbus", name), message))
    return problems
