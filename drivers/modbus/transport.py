"""The wire: one pymodbus client per connection, and the only place pymodbus is imported.

A ``Link`` sends one neutral ``Read`` or ``Write`` to one unit and returns an ``Answer``;
pymodbus' exceptions are translated here, once::

    pymodbus ConnectionException, or the link dropping while a request waits  -> LinkLost
    pymodbus ModbusIOException (no, or no matching, answer)                   -> NoAnswer
    any other pymodbus ModbusException                                        -> LinkError

Timeouts and retries are not pymodbus' business: the client is built with no retries and a
ceiling timeout, and the bus bounds every connect and every try with the unit's own
``timeout_s`` (units on one bus may differ, pymodbus has one timeout per client).
pymodbus' background reconnect is off too: the bus decides when to connect again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from .config import ModbusConnection
from .types import Table

CLIENT_TIMEOUT_S = 120.0
"""Above any configured ``timeout_s`` (at most 60): pymodbus must never time out first."""

Client = AsyncModbusTcpClient | AsyncModbusSerialClient

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
ILLEGAL_DATA_ADDRESS = 2
GATEWAY_FAILURES = frozenset({10, 11})
"""A gateway answering for a device it cannot reach means the device is unavailable."""


def exception_reason(code: int) -> str:
    """A reason for a ``bad`` reading: ``exception 2: illegal data address``."""
    return f"exception {code}: {EXCEPTION_NAMES.get(code, 'unknown')}"


class LinkLost(Exception):
    """The connection dropped (or was never there) while a request needed it."""


class NoAnswer(Exception):
    """pymodbus gave up on a request: no answer, or one that did not match it."""


class LinkError(Exception):
    """Anything else pymodbus raised; the connection is not trusted any more."""


@dataclass(frozen=True, slots=True)
class Read:
    """Function 3, 4, 1 or 2, by table."""

    table: Table
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class Write:
    """A coil by function 5; one register by 6; several registers by 16."""

    table: Table
    address: int
    values: tuple[int, ...]


Request = Read | Write


@dataclass(frozen=True, slots=True)
class Answer:
    """A response: registers or bits read (nothing for a write), or an exception code."""

    registers: tuple[int, ...] = ()
    bits: tuple[bool, ...] = ()
    exception: int = 0


def make_client(conn: ModbusConnection, on_link: Callable[[bool], None]) -> Client:
    """The one place a transport is chosen: TCP, RTU over TCP, or RTU on a serial port."""
    if conn.serial is not None:
        return AsyncModbusSerialClient(
            conn.serial,
            framer=FramerType.RTU,
            baudrate=conn.baudrate,
            bytesize=conn.bytesize,
            parity=conn.parity,
            stopbits=conn.stopbits,
            timeout=CLIENT_TIMEOUT_S,
            retries=0,
            reconnect_delay=0,
            trace_connect=on_link,
        )
    assert conn.host is not None  # the config allows exactly one of host and serial
    return AsyncModbusTcpClient(
        conn.host,
        port=conn.port,
        framer=FramerType.RTU if conn.framing == "rtu" else FramerType.SOCKET,
        timeout=CLIENT_TIMEOUT_S,
        retries=0,
        reconnect_delay=0,
        trace_connect=on_link,
    )


class Link:
    """One connection, and a future that resolves when the peer drops it.

    pymodbus notices a dropped connection but lets a request on it wait out its timeout;
    racing each request against ``lost`` reports the drop at once.
    """

    def __init__(self, conn: ModbusConnection) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.client = make_client(conn, self._on_link)

    def _on_link(self, up: bool) -> None:
        if not up and not self.lost.done():
            self.lost.set_result(None)

    @property
    def up(self) -> bool:
        return self.client.connected and not self.lost.done()

    async def open(self) -> str | None:
        """Connect, or open the port; None if that worked, else why not."""
        if isinstance(self.client, AsyncModbusSerialClient):
            try:
                opened = await self.client.connect()
            except Exception:  # pyserial raises termios.error, ValueError … past pymodbus
                opened = False
            return None if opened else "cannot open serial port"
        return None if await self.client.connect() else "connect failed"

    async def send(self, request: Request, unit: int) -> Answer:
        """The unit's answer to ``request``; raises LinkLost, NoAnswer or LinkError."""
        try:
            response = await self._exchange(_call(self.client, request, unit))
        except ConnectionException:
            raise LinkLost from None
        except ModbusIOException:
            raise NoAnswer from None
        except ModbusException as exc:
            raise LinkError(str(exc)) from None
        if response.isError():
            return Answer(exception=response.exception_code)
        if isinstance(request, Write):
            return Answer()
        if request.table in ("coil", "discrete"):
            return Answer(bits=tuple(response.bits[: request.count]))
        return Answer(registers=tuple(response.registers))

    async def _exchange(self, request: Awaitable[ModbusPDU]) -> ModbusPDU:
        pending = asyncio.ensure_future(request)
        try:
            done, _ = await asyncio.wait((pending, self.lost), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # a timeout above us: pymodbus' lock is released
            pending.cancel()
            raise
        if pending not in done:
            pending.cancel()
            raise ConnectionException("connection lost")
        return pending.result()

    def close(self) -> None:
        """Close, and fail a request still waiting on this link (pymodbus would not)."""
        self.client.close()
        self._on_link(False)


def _call(client: Client, request: Request, unit: int) -> Awaitable[ModbusPDU]:
    if isinstance(request, Write):
        if request.table == "coil":
            return client.write_coil(request.address, bool(request.values[0]), device_id=unit)
        if len(request.values) == 1:
            return client.write_register(request.address, request.values[0], device_id=unit)
        return client.write_registers(request.address, list(request.values), device_id=unit)
    read = {
        "holding": client.read_holding_registers,
        "input": client.read_input_registers,
        "coil": client.read_coils,
        "discrete": client.read_discrete_inputs,
    }[request.table]
    return read(request.address, count=request.count, device_id=unit)
