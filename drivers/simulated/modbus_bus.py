"""A simulated Modbus bus on pymodbus' own server: several units on one serial line or port.

Transports: Modbus TCP (``framer="tcp"``), RTU over TCP (``framer="rtu"``: a serial server
passing RTU frames through a socket), and RTU on a serial port (``serial=``, e.g. one end of
a ``socat`` pseudo-terminal pair). Each unit is built from the same ``ModbusPoint`` list a
driver is configured with, and values are set through the driver's own codec.

What a test can do to a unit: ``fail_with`` an exception code (every request is answered
with it), or make it ``silent`` (requests arrive and are counted, no answer goes out: a
unit that is powered off or has a broken wire). Requests to a unit the bus does not serve
go unanswered too, as on a real RS-485 line. A unit alone on a Modbus TCP port is a device
addressed by its IP: it also answers unit 0 and 255 (``TCP_DEVICE_UNITS``), as the Modbus
TCP implementation guide asks, so masters that send 255 (libmodbus, many PLCs) or 0 (some
HMIs) read it too.

``requests`` counts received requests per unit; ``exchanges`` records, in order, each
request received and each answer sent, so a test can see that a master never sent a
request while another was still waiting for its answer.

Built on ``SimDevice``/``SimData``: in pymodbus 3.16 the older ``ModbusDeviceContext`` and
``ModbusSequentialDataBlock``/``ModbusSparseDataBlock`` are deprecated shims that build
exactly that, log a warning each, and disagree about addresses. Two layouts:

* dense (default): each table holds every address from 0 to the end of its last point, so
  coalesced reads across holes succeed, as on most devices;
* sparse: registers hold only the addresses points use; any read touching another one is
  answered with exception 2, as some devices do. pymodbus' bit blocks have no holes, so
  coils and discrete inputs read ``False`` between points in both layouts.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Final, Literal, cast

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from drivers.base import Value
from drivers.modbus.codec import decode, decode_bits, encode
from drivers.modbus.config import ModbusPoint
from drivers.modbus.types import BIT_TABLES, Table
from drivers.simulated.animate import Served

_FUNCTION_CODE: dict[Table, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
"""pymodbus' datastore picks a table by function code; the read code names each table."""

TCP_DEVICE_UNITS: Final = frozenset({0, 255})
"""Unit ids that reach a device alone on a Modbus TCP port besides its own: the Modbus TCP
implementation guide has a client address such a device with 255 and accepts 0."""

Server = ModbusTcpServer | ModbusSerialServer
Exchange = tuple[float, Literal["request", "answer"], int]
"""When (monotonic), what passed, and for which unit."""


class SimulatedUnit:
    """One unit (slave) of a simulated bus: its points, its datastore, what it received."""

    def __init__(
        self, bus: SimulatedModbusBus, unit: int, points: Sequence[ModbusPoint], sparse: bool
    ) -> None:
        self.bus = bus
        self.unit = unit
        self.points = {point.name: point for point in points}
        self.sparse = sparse
        self.requests: Counter[int] = Counter()
        """Received requests by function code (3 = read holding registers)."""
        self.fail_with: int | None = None
        self.silent = False
        self._local = False  # our own get/set run through the datastore too; never fail them

    def simdevice(self) -> SimDevice:
        simdata = _layout(list(self.points.values()), self.sparse)
        return SimDevice(id=self.unit, simdata=simdata, action=self._action)

    async def set(self, name: str, value: Value) -> None:
        """Make point ``name`` read as ``value``, encoded by the driver's codec."""
        point = self.points[name]
        current = await self.get_raw(point.table, point.address, 1) if point.type == "bit" else []
        registers = encode(point, value, [int(word) for word in current])
        if point.table in BIT_TABLES:
            await self.set_raw(point.table, point.address, [bool(registers[0])])
        else:
            await self.set_raw(point.table, point.address, registers)

    async def get(self, name: str) -> Value:
        """What point ``name`` holds now, e.g. after a driver wrote it."""
        point = self.points[name]
        raw = await self.get_raw(point.table, point.address, point.count)
        if point.table in BIT_TABLES:
            return decode_bits(point, [bool(bit) for bit in raw])
        return decode(point, [int(word) for word in raw])

    async def set_raw(self, table: Table, address: int, values: list[int] | list[bool]) -> None:
        """Store registers (or bits) as they go on the wire, bypassing the codec."""
        with self._own_access():
            server = self.bus.running()
            await server.async_setValues(self.unit, _FUNCTION_CODE[table], address, values)

    async def get_raw(self, table: Table, address: int, count: int) -> list[int] | list[bool]:
        with self._own_access():
            server = self.bus.running()
            return await server.async_getValues(self.unit, _FUNCTION_CODE[table], address, count)

    @contextmanager
    def _own_access(self) -> Iterator[None]:
        """Our own reads and writes pass ``_action`` too; ``fail_with`` must not hit them.

        A flag is enough: pymodbus' datastore path has no real suspension point, so no
        client request is served between setting and clearing it.
        """
        self._local = True
        try:
            yield
        finally:
            self._local = False

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this for every access that passed its address check."""
        if self.fail_with is None or self._local:
            return None
        return ExcCodes(self.fail_with)


class SimulatedModbusBus(Served):
    """Units on one simulated bus: a TCP port (``framer`` tcp or rtu) or a serial port."""

    def __init__(
        self,
        units: Mapping[int, Sequence[ModbusPoint]],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        framer: Literal["tcp", "rtu"] = "tcp",
        serial: str | None = None,
        baudrate: int = 19200,
        parity: str = "N",
        stopbits: int = 1,
        sparse: bool = False,
    ) -> None:
        self.units = {n: SimulatedUnit(self, n, points, sparse) for n, points in units.items()}
        self.host = host
        self.framer: Literal["tcp", "rtu"] = "rtu" if serial is not None else framer
        self.serial = serial
        self.baudrate, self.parity, self.stopbits = baudrate, parity, stopbits
        self.received: Counter[int] = Counter()
        """Requests received by unit id, served or not."""
        self.exchanges: deque[Exchange] = deque(maxlen=100_000)
        alone = len(self.units) == 1 and self.framer == "tcp"
        self._tcp_device = next(iter(self.units.values())) if alone else None
        """The unit alone on a Modbus TCP port: a device that also answers TCP_DEVICE_UNITS."""
        self._port = port
        self._server: Server | None = None

    @property
    def port(self) -> int:
        """The TCP port listened on; the one the OS picked when constructed with port 0."""
        return self._port

    def unit(self, unit: int) -> SimulatedUnit:
        return self.units[unit]

    @property
    def total_requests(self) -> int:
        """Requests received for any unit, served or not."""
        return sum(self.received.values())

    async def start(self) -> None:
        devices = [unit.simdevice() for unit in self.units.values()]
        if 0 not in self.units:
            # pymodbus' SimCore sends a unit it does not know to unit 0, and without one it
            # fails with a traceback in the log; this catch-all is never answered (below).
            devices.append(SimDevice(id=0, simdata=_layout([], sparse=True)))
        framer = FramerType.RTU if self.framer == "rtu" else FramerType.SOCKET
        if self.serial is not None:
            self._server = ModbusSerialServer(
                devices,
                framer=framer,
                port=self.serial,
                baudrate=self.baudrate,
                parity=self.parity,
                stopbits=self.stopbits,
                trace_pdu=self._received,
                trace_packet=self._sending,
            )
        else:
            self._server = ModbusTcpServer(
                devices,
                framer=framer,
                address=(self.host, self._port),
                trace_pdu=self._received,
                trace_packet=self._sending,
            )
        if self._tcp_device is not None:
            self._server.context = _TcpDeviceCore(devices, self._tcp_device.unit)
        await self._server.serve_forever(background=True)
        if self.serial is None:
            listener = cast(asyncio.Server, self._server.transport)
            self._port = listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening (close the port) and drop every client connection."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # unannotated upstream
            self._server = None

    def running(self) -> Server:
        if self._server is None:
            raise RuntimeError("the simulated bus is not started")
        return self._server

    def _served(self, dev_id: int) -> SimulatedUnit | None:
        """The unit that answers requests to ``dev_id``, if any."""
        unit = self.units.get(dev_id)
        if unit is None and dev_id in TCP_DEVICE_UNITS:
            return self._tcp_device
        return unit

    def _received(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.exchanges.append((time.monotonic(), "request", pdu.dev_id))
            self.received[pdu.dev_id] += 1
            if (unit := self._served(pdu.dev_id)) is not None:
                unit.requests[pdu.function_code] += 1
        return pdu

    def _sending(self, sending: bool, frame: bytes) -> bytes:
        """Answers of silent or unknown units are dropped here, on their way to the wire."""
        if not sending:
            return frame
        dev_id = frame[0] if self.framer == "rtu" else frame[6]  # after the MBAP header
        unit = self._served(dev_id)
        if unit is None or unit.silent:
            return b""
        self.exchanges.append((time.monotonic(), "answer", dev_id))
        return frame


class _TcpDeviceCore(SimCore):
    """pymodbus' datastore, with requests to ``TCP_DEVICE_UNITS`` looked up in ``unit``.

    Only the lookup changes: pymodbus answers with the unit id of the request, as the guide
    asks, and ids that are neither the unit's own nor these still reach the catch-all.
    """

    def __init__(self, devices: list[SimDevice], unit: int) -> None:
        super().__init__(devices)
        self._unit = unit

    def _lookup(self, device_id: int) -> int:
        return self._unit if device_id in TCP_DEVICE_UNITS else device_id

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        return await super().async_getValues(self._lookup(device_id), func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        return await super().async_setValues(self._lookup(device_id), func_code, address, values)


def _layout(
    points: Sequence[ModbusPoint], sparse: bool
) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
    """pymodbus' four separate tables, in its order: coils, discrete inputs, holding, input."""
    return (
        _table(points, "coil", sparse),
        _table(points, "discrete", sparse),
        _table(points, "holding", sparse),
        _table(points, "input", sparse),
    )


def _table(points: Sequence[ModbusPoint], table: Table, sparse: bool) -> list[SimData]:
    spans = _spans(point for point in points if point.table == table)
    bits = table in BIT_TABLES
    if not spans:
        # pymodbus needs at least one entry per table: a bit word of zeros, or a register
        # that refuses every access.
        return [SimData(0, values=[False], datatype=DataType.BITS)] if bits else [SimData(0)]
    if not sparse:
        spans = [(0, spans[-1][1])]
    if bits:
        return [SimData(a, values=[False] * (b - a), datatype=DataType.BITS) for a, b in spans]
    return [SimData(a, values=[0] * (b - a), datatype=DataType.REGISTERS) for a, b in spans]


def _spans(points: Iterable[ModbusPoint]) -> list[tuple[int, int]]:
    """The address ranges points occupy, merged where they touch or overlap."""
    spans: list[tuple[int, int]] = []
    for point in sorted(points, key=lambda p: p.address):
        start, end = point.address, point.address + point.count
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans
