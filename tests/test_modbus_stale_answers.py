"""RTU has no transaction id: a late answer must never pass for the answer to the next request.

A scripted RTU device, written here from the RTU framing alone (no pymodbus), answers each
request as a test says: after a delay, with any frame, or not at all, and processes requests
in order as a busy device, gateway or serial server does. It listens on 127.0.0.1 (RTU over
TCP) or sits on one end of a ``socat`` pty pair (RTU on a serial line). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DeviceUnavailable, Quality, Reading
from drivers.modbus import ModbusConnection, ModbusDevice
from drivers.modbus.bus import rtu_silence_s, stale_guard_s
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.transport import (
    Answer,
    Link,
    Read,
    Request,
    Write,
    WrongAnswer,
    exception_reason,
)
from tests.support import rtu_crc
from tests.test_modbus_rtu import serial_line

Script = Callable[[int, bytes], tuple[float, bytes | None]]
"""(number of the request, from 1, over all connections; its PDU with the unit id in front,
no CRC) -> (seconds to wait, the answer the same way, or None for no answer)."""


def registers(unit: int, fc: int, values: list[int]) -> bytes:
    """A read answer: ``values`` as 16-bit registers."""
    return bytes([unit, fc, 2 * len(values)]) + b"".join(struct.pack(">H", v) for v in values)


def holding(address: int) -> int:
    """What the scripted devices hold: register ``a`` is 1000 + a, so blocks differ."""
    return 1000 + address


def in_order(late: float) -> Script:
    """Answers holding-register reads with their values; the first one ``late`` s late."""

    def script(n: int, request: bytes) -> tuple[float, bytes | None]:
        unit, fc, address, count = struct.unpack(">BBHH", request[:6])
        values = [holding(address + i) for i in range(count)]
        return (late if n == 1 else 0.02), registers(unit, fc, values)

    return script


class ScriptedDevice:
    """Requests in, answers out, one at a time and in order, per connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(
        self, read_exactly: Callable[[int], Awaitable[bytes]], write: Callable[[bytes], None]
    ) -> None:
        queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        worker = asyncio.create_task(self._answer(queue, write))
        self._tasks.add(worker)
        try:
            while True:
                head = await read_exactly(7)
                rest = head[6] + 2 if head[1] in (15, 16) else 1
                frame = head + await read_exactly(rest)
                assert rtu_crc(frame[:-2]) == frame[-2:], frame.hex()
                self.requests.append(frame[:-2])
                queue.put_nowait((len(self.requests), frame[:-2]))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            worker.cancel()

    async def _answer(
        self, queue: asyncio.Queue[tuple[int, bytes]], write: Callable[[bytes], None]
    ) -> None:
        while True:
            delay, answer = self.script(*await queue.get())
            await asyncio.sleep(delay)
            if answer is not None:
                try:
                    write(answer + rtu_crc(answer))
                except (OSError, RuntimeError):
                    return  # the master hung up: what we had for it is lost with it

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@asynccontextmanager
async def rtu_over_tcp(script: Script) -> AsyncIterator[tuple[ScriptedDevice, int]]:
    """The device behind a serial server on 127.0.0.1: (device, port)."""
    device = ScriptedDevice(script)

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        device.connections += 1
        try:
            await device.serve(reader.readexactly, writer.write)
        finally:
            writer.close()

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    try:
        yield device, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await device.close()


@asynccontextmanager
async def on_serial_line(script: Script, line_end: str) -> AsyncIterator[ScriptedDevice]:
    """The device on one end of a pty pair (socat set it raw, without echo)."""
    device = ScriptedDevice(script)
    fd = os.open(line_end, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(fd), "rb", buffering=0)
    )
    serving = asyncio.create_task(device.serve(reader.readexactly, lambda b: _write(fd, b)))
    try:
        yield device
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await device.close()
        transport.close()
        os.close(fd)


def _write(fd: int, data: bytes) -> None:
    assert os.write(fd, data) == len(data)


TWO_BLOCKS = [
    {"name": "a0", "table": "holding", "address": 0, "type": "uint16"},
    {"name": "a1", "table": "holding", "address": 1, "type": "uint16"},
    {"name": "b0", "table": "holding", "address": 100, "type": "uint16"},
    {"name": "b1", "table": "holding", "address": 101, "type": "uint16"},
]
"""Two blocks of the same size: an answer to one has the very shape of an answer to the
other, so only when it comes can tell them apart."""


def device(modbus: dict[str, Any], points: list[dict[str, Any]], **extra: Any) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {"id": "d", "modbus": {"unit": 1} | modbus, "points": points, "max_gap": 0} | extra
    )


def assert_never_another_blocks_value(polls: list[list[Reading]]) -> None:
    for readings in polls:
        for r in readings:
            address = int(r.point[1:]) + (100 if r.point.startswith("b") else 0)
            right = r.quality is Quality.GOOD and r.value == holding(address)
            assert right or (r.quality is Quality.BAD and r.reason == "timeout"), r


# -- a late answer ---------------------------------------------------------------------------


async def test_a_late_answer_over_rtu_over_tcp_is_never_taken_for_the_next_request() -> None:
    """The first answer comes 0.2 s after its try timed out; without care the retry takes
    it, and the retry's own answer then passes for block b's: b reads a's values."""
    async with rtu_over_tcp(in_order(late=0.5)) as (sim, port):
        modbus = {"host": "127.0.0.1", "port": port, "framer": "rtu"}
        driver = ModbusDriver(device(modbus | {"timeout_s": 0.3, "retries": 1}, TWO_BLOCKS))
        polls: list[list[Reading]] = []
        try:
            async with asyncio.timeout(10):
                for _ in range(3):
                    polls.append(await driver.read())
                    await asyncio.sleep(0.3)
        finally:
            await driver.aclose()
    assert_never_another_blocks_value(polls)
    assert {r.quality for r in polls[-1]} == {Quality.GOOD}
    assert sim.connections == 2  # the timeout dropped the connection with what it held
    assert driver.stats.timeouts == 0 and driver.stats.retries == 1


async def test_a_late_answer_on_a_serial_line_is_let_pass_before_the_next_frame(
    tmp_path: Path,
) -> None:
    """A serial line cannot be reconnected: after a timeout the bus waits until the line is
    quiet (a quarter of the 0.8 s timeout, counted from the last byte) before the retry,
    so the answer 0.05 s late finds no request waiting and is dropped."""
    with serial_line(tmp_path) as (devices_end, master_end):
        async with on_serial_line(in_order(late=0.85), devices_end) as sim:
            modbus = {"serial": master_end, "baudrate": 19200, "parity": "N"}
            config = device(modbus | {"timeout_s": 0.8, "retries": 1}, TWO_BLOCKS)
            driver = ModbusDriver(config)
            polls: list[list[Reading]] = []
            try:
                async with asyncio.timeout(10):
                    for _ in range(3):
                        polls.append(await driver.read())
            finally:
                await driver.aclose()
    assert_never_another_blocks_value(polls)
    assert all(r.quality is Quality.GOOD for rs in polls for r in rs), polls
    assert len(sim.requests) == 7  # a, its retry, b, then two polls of two
    assert driver.stats.retries == 1 and driver.stats.timeouts == 0


def test_a_stale_line_waits_a_quarter_of_the_timeout_within_bounds() -> None:
    assert stale_guard_s(0.8, rtu_silence_s(19200)) == pytest.approx(0.2)
    assert stale_guard_s(0.25, rtu_silence_s(19200)) == pytest.approx(0.0625)
    assert stale_guard_s(0.005, rtu_silence_s(1200)) == rtu_silence_s(1200)  # 32 ms
    assert stale_guard_s(60.0, 0.0) == 1.0  # a slow unit must not stall its bus for long


# -- answers of the wrong shape --------------------------------------------------------------


def fixed(answer: bytes | None) -> Script:
    return lambda n, request: (0.0, answer)


REFUSED: list[tuple[str, Request, bytes]] = [
    ("too few registers", Read("holding", 0, 2), registers(1, 3, [7])),
    ("too many registers", Read("holding", 0, 2), registers(1, 3, [7, 8, 9])),
    ("a write ack for a read", Read("holding", 5, 1), bytes([1, 6, 0, 5, 0x04, 0xD2])),
    ("another read function", Read("input", 0, 1), registers(1, 3, [7])),
    ("another function's exception", Read("holding", 0, 1), bytes([1, 0x84, 2])),
    ("too few bits", Read("coil", 0, 10), bytes([1, 1, 1, 0xFF])),
    ("function 6, other value", Write("holding", 5, (7,)), bytes([1, 6, 0, 5, 0, 8])),
    ("function 6, other address", Write("holding", 5, (7,)), bytes([1, 6, 0, 6, 0, 7])),
    ("function 16, other quantity", Write("holding", 5, (1, 2)), bytes([1, 16, 0, 5, 0, 3])),
    ("function 5, other state", Write("coil", 2, (1,)), bytes([1, 5, 0, 2, 0, 0])),
    ("a read answer for a write", Write("holding", 5, (1, 2)), registers(1, 3, [1, 2])),
]

ACCEPTED: list[tuple[str, Request, bytes, Answer]] = [
    ("registers", Read("holding", 0, 2), registers(1, 3, [7, 8]), Answer(registers=(7, 8))),
    ("input registers", Read("input", 0, 1), registers(1, 4, [7]), Answer(registers=(7,))),
    ("its exception", Read("holding", 0, 1), bytes([1, 0x83, 7]), Answer(exception=7)),
    ("bits", Read("coil", 0, 3), bytes([1, 1, 1, 0b101]), Answer(bits=(True, False, True))),
    ("function 6 echo", Write("holding", 5, (7,)), bytes([1, 6, 0, 5, 0, 7]), Answer()),
    ("function 16 echo", Write("holding", 5, (1, 2)), bytes([1, 16, 0, 5, 0, 2]), Answer()),
    ("function 5 echo", Write("coil", 2, (1,)), bytes([1, 5, 0, 2, 0xFF, 0]), Answer()),
]


async def _send(request: Request, answer: bytes) -> Answer:
    async with rtu_over_tcp(fixed(answer)) as (_, port):
        link = Link(ModbusConnection(host="127.0.0.1", port=port, framer="rtu"))
        try:
            async with asyncio.timeout(3):
                assert await link.open() is None
                return await link.send(request, 1)
        finally:
            link.close()


@pytest.mark.parametrize(("case", "request_", "answer"), REFUSED, ids=[c[0] for c in REFUSED])
async def test_an_answer_of_the_wrong_function_or_size_is_refused(
    case: str, request_: Request, answer: bytes
) -> None:
    with pytest.raises(WrongAnswer):
        await _send(request_, answer)


@pytest.mark.parametrize(
    ("case", "request_", "answer", "want"), ACCEPTED, ids=[c[0] for c in ACCEPTED]
)
async def test_an_answer_that_fits_its_request_is_taken(
    case: str, request_: Request, answer: bytes, want: Answer
) -> None:
    assert await _send(request_, answer) == want


async def test_a_wrong_answer_is_no_answer_to_the_driver_never_data() -> None:
    """A device answering every read with one register too many: the retry goes out on a
    fresh connection, and the poll fails with a timeout instead of reading shifted values."""
    answer = registers(1, 3, [holding(0), holding(1), holding(2)])
    async with rtu_over_tcp(fixed(answer)) as (sim, port):
        modbus = {"host": "127.0.0.1", "port": port, "framer": "rtu"}
        driver = ModbusDriver(device(modbus | {"timeout_s": 0.3, "retries": 1}, TWO_BLOCKS[:2]))
        try:
            async with asyncio.timeout(5):
                with pytest.raises(DeviceUnavailable) as failed:
                    await driver.read()
        finally:
            await driver.aclose()
    assert failed.value.reason == "timeout"
    assert len(sim.requests) == 2 and sim.connections == 2


# -- exception 7, and a split that outlives a failed poll ------------------------------------


async def test_exception_7_is_a_negative_acknowledge() -> None:
    assert exception_reason(7) == "exception 7: negative acknowledge"
    async with rtu_over_tcp(fixed(bytes([1, 0x83, 7]))) as (_, port):
        modbus = {"host": "127.0.0.1", "port": port, "framer": "rtu", "timeout_s": 0.5}
        driver = ModbusDriver(device(modbus, TWO_BLOCKS[:1]))
        try:
            async with asyncio.timeout(5):
                (reading,) = await driver.read()
        finally:
            await driver.aclose()
    assert reading.quality is Quality.BAD
    assert reading.reason == "exception 7: negative acknowledge"


async def test_a_split_is_remembered_when_the_poll_then_fails() -> None:
    """The block over a hole is refused and split; the first piece answers, the unit then
    stops answering. The next poll must not send the refused block again."""

    def script(n: int, request: bytes) -> tuple[float, bytes | None]:
        unit, fc, address, count = struct.unpack(">BBHH", request[:6])
        if count > 1:
            return 0.0, bytes([unit, fc | 0x80, 2])  # no reads over holes
        if n == 2:
            return 0.0, registers(unit, fc, [holding(address)])
        return 0.0, None  # and then silence

    points = [TWO_BLOCKS[0], {"name": "c", "table": "holding", "address": 10, "type": "uint16"}]
    async with rtu_over_tcp(script) as (sim, port):
        modbus = {"host": "127.0.0.1", "port": port, "framer": "rtu"}
        config = device(modbus | {"timeout_s": 0.2, "retries": 0}, points, max_gap=16)
        driver = ModbusDriver(config)
        assert [(b.address, b.count) for b in driver.blocks] == [(0, 11)]
        try:
            async with asyncio.timeout(5):
                with pytest.raises(DeviceUnavailable, match="timeout"):
                    await driver.read()
        finally:
            await driver.aclose()
    assert [(b.address, b.count) for b in driver.blocks] == [(0, 1), (10, 1)]
    assert len(sim.requests) == 3
