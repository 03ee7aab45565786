"""The wire: one pymodbus client per connection, and the only place pymodbus is imported.

A ``Link`` sends one neutral ``Read`` or ``Write`` to one unit and returns an ``Answer``;
pymodbus' exceptions are translated here, once::

    pymodbus ConnectionException, or the link dropping while a request waits  -> LinkLost
    pymodbus ModbusIOException (no, or no matching, answer)                   -> NoAnswer
    an answer that is not one to this request (see below)                     -> WrongAnswer
    a frame that cannot be an answer (``frames.py``, or pymodbus' framer raises) -> WrongAnswer
    any other pymodbus ModbusException                                        -> LinkError

RTU frames carry no transaction id: pymodbus takes the first frame from the right unit as
the answer, so a late answer to an earlier request would pass for the answer to the next
one. ``Link.send`` therefore checks every answer against its request: the function code
(or its exception form, ``code | 0x80``); for a register read the register count; for a
bit read at least the bits asked; for writes (5, 6, 16) the echoed address and value or
quantity. An answer that fails is ``WrongAnswer`` (a ``NoAnswer``), never data. Such an
answer can still pass when it has the very shape of the current request; what the bus does
after a timeout on RTU (``bus.py``) keeps that window small. ``Link.last_received`` and
``Link.settle()`` are for that.

Timeouts and retries are not pymodbus' business: the client is built with no retries and a
ceiling timeout, and the bus bounds every connect and every try with the unit's own
``timeout_s`` (units on one bus may differ, pymodbus has one timeout per client).
pymodbus' background reconnect is off too: the bus decides when to connect again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from .config import ModbusConnection
from .frames import mbap_problem
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
    7: "negative acknowledge",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
ILLEGAL_DATA_ADDRESS = 2
GATEWAY_FAILURES = frozenset({10, 11})
"""A gateway answering for a device it cannot reach means the device is unavailable."""

FUNCTION_CODES: dict[Table, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
"""The read function of each table."""


def exception_reason(code: int) -> str:
    """A reason for a ``bad`` reading: ``exception 2: illegal data address``."""
    return f"exception {code}: {EXCEPTION_NAMES.get(code, 'unknown')}"


class LinkLost(Exception):
    """The connection dropped (or was never there) while a request needed it."""


class NoAnswer(Exception):
    """pymodbus gave up on a request: no answer, or one that did not match it."""


class WrongAnswer(NoAnswer):
    """An answer that is not one to the request sent: a late answer to another request."""


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


def function_code(request: Request) -> int:
    """The function ``request`` is sent with."""
    if isinstance(request, Read):
        return FUNCTION_CODES[request.table]
    if request.table == "coil":
        return 5
    return 6 if len(request.values) == 1 else 16


def make_client(
    conn: ModbusConnection,
    on_link: Callable[[bool], None],
    on_packet: Callable[[bool, bytes], bytes] | None = None,
) -> Client:
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
            trace_packet=on_packet,
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
        trace_packet=on_packet,
    )


class Link:
    """One connection, and a future that resolves when the peer drops it.

    pymodbus notices a dropped connection but lets a request on it wait out its timeout;
    racing each request against ``lost`` reports the drop at once. ``last_received`` is
    when bytes last came in (``time.monotonic()``; 0 before any), answers or not.
    """

    def __init__(self, conn: ModbusConnection) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.last_received = 0.0
        self.client = make_client(conn, self._on_link, self._on_packet)
        self._mbap = conn.serial is None and conn.framing != "rtu"
        self._malformed: asyncio.Future[str] | None = None  # while a request waits
        # Every received byte passes pymodbus' ``callback_data`` (the client reuses one
        # protocol object): guarded, a malformed frame cannot raise in ``data_received``.
        self._decode = self.client.ctx.callback_data
        self.client.ctx.callback_data = self._received  # type: ignore[method-assign]

    def _on_link(self, up: bool) -> None:
        if not up and not self.lost.done():
            self.lost.set_result(None)

    def _received(self, data: bytes, addr: tuple[str, int] | None = None) -> int:
        """pymodbus' ``callback_data``, guarded: a frame that cannot be an answer (see
        ``frames.py``, or one pymodbus' framer raises on) fails the request under way
        as a wrong answer and is thrown away, with whatever came after it in the buffer.
        Raised out of here, asyncio logged a traceback and dropped the connection."""
        problem = mbap_problem(data) if self._mbap else None
        if problem is None:
            try:
                return int(self._decode(data, addr))
            except Exception as exc:  # ModbusIOException from the framer, or worse
                problem = f"undecodable answer ({type(exc).__name__}: {exc})"
        self.last_received = time.monotonic()
        if self._malformed is not None and not self._malformed.done():
            self._malformed.set_result(problem)
        return len(data)

    def _on_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self.last_received = time.monotonic()
        return data

    async def settle(self, since: float, guard_s: float, limit_s: float) -> None:
        """Let the line go quiet, then forget whatever pymodbus holds of a frame.

        Waits until nothing has come in for ``guard_s``, counted from ``since`` (when the
        line went stale) or from the last byte, whichever is later; never past ``since +
        limit_s``. An answer arriving meanwhile finds no request waiting and is dropped.
        """
        deadline = since + limit_s
        while True:
            now = time.monotonic()
            until = min(max(since, self.last_received) + guard_s, deadline)
            if now >= until:
                break
            await asyncio.sleep(until - now)
        self.client.ctx.recv_buffer = b""

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
        """The unit's answer to ``request``; raises LinkLost, NoAnswer (WrongAnswer for an
        answer to some other request) or LinkError."""
        try:
            response = await self._exchange(_call(self.client, request, unit))
        except ConnectionException:
            raise LinkLost from None
        except ModbusIOException:
            raise NoAnswer from None
        except ModbusException as exc:
            raise LinkError(str(exc)) from None
        return answer_to(request, response)

    async def _exchange(self, request: Awaitable[ModbusPDU]) -> ModbusPDU:
        malformed = self._malformed = asyncio.get_running_loop().create_future()
        pending = asyncio.ensure_future(request)
        try:
            done, _ = await asyncio.wait(
                (pending, self.lost, malformed), return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # a timeout above us: pymodbus' lock is released
            pending.cancel()
            raise
        finally:
            self._malformed = None
        if pending in done:
            return pending.result()
        pending.cancel()
        if malformed.done():
            raise WrongAnswer(malformed.result())
        raise ConnectionException("connection lost")

    def close(self) -> None:
        """Close, and fail a request still waiting on this link (pymodbus would not)."""
        self.client.close()
        self._on_link(False)


def answer_to(request: Request, response: ModbusPDU) -> Answer:
    """``response`` as the answer to ``request``; WrongAnswer if it cannot be one."""
    code = function_code(request)
    if response.function_code == code | 0x80:
        return Answer(exception=response.exception_code)
    if response.function_code != code:
        raise WrongAnswer(f"function {response.function_code} answered function {code}")
    if isinstance(request, Read):
        if request.table in ("coil", "discrete"):
            if len(response.bits) < request.count:
                raise WrongAnswer(f"{len(response.bits)} bits answered {request.count}")
            return Answer(bits=tuple(response.bits[: request.count]))
        if len(response.registers) != request.count:
            raise WrongAnswer(f"{len(response.registers)} registers answered {request.count}")
        return Answer(registers=tuple(response.registers))
    if response.address != request.address:
        raise WrongAnswer(f"address {response.address} echoed for {request.address}")
    if code == 5:
        echoed = tuple(response.bits[:1]) == (bool(request.values[0]),)
    elif code == 6:
        echoed = tuple(response.registers) == request.values
    else:
        echoed = response.count == len(request.values)
    if not echoed:
        raise WrongAnswer(f"function {code} echoed other values than sent")
    return Answer()


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
