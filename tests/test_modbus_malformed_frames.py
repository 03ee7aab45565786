"""A Modbus TCP device that answers with frames no decoder can take must not crash the link.

A scripted device, written here from the MBAP framing alone (no pymodbus), reads each
request and answers with a raw frame a test builds from the request's transaction id:
an MBAP length of 2 (unit id and function code, nothing else), lengths too short or too
long for what follows, a wrong protocol id, a payload cut short, or plain garbage. pymodbus
3.16 raises from inside its framer for some of these, in ``data_received``; asyncio then
logged ``Fatal error: protocol.data_received() call failed`` with a traceback and dropped
the connection, at every poll. Each such answer must be a bad answer like any other:
counted, the unit logged unavailable once, no traceback. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from drivers.base import DeviceUnavailable, Quality
from drivers.modbus import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.frames import mbap_problem

Answer = Callable[[int, int], bytes]
"""(transaction id, unit) of a request -> the raw bytes the device writes back."""


def mbap(tid: int, length: int, unit: int, pdu: bytes, *, protocol: int = 0) -> bytes:
    """An MBAP header with the length field as given, whatever follows it."""
    return struct.pack(">HHHB", tid, protocol, length, unit) + pdu


def good(tid: int, unit: int) -> bytes:
    """Holding register 0 reads 1234."""
    return mbap(tid, 5, unit, bytes([3, 2]) + struct.pack(">H", 1234))


MALFORMED: dict[str, Answer] = {
    # unit id and function code, no byte count: pymodbus' framer raised ModbusIOException
    "mbap length 2": lambda tid, unit: mbap(tid, 2, unit, bytes([3])),
    "mbap length 2, an exception with no code": lambda tid, unit: mbap(tid, 2, unit, b"\x83"),
    "mbap length 2 and a byte more": lambda tid, unit: mbap(tid, 2, unit, bytes([3, 2])),
    "a byte count past the frame": lambda tid, unit: mbap(tid, 4, unit, bytes([3, 200, 0])),
    "an unknown function": lambda tid, unit: mbap(tid, 3, unit, bytes([0x41, 0])),
    "mbap length 1": lambda tid, unit: mbap(tid, 1, unit, b""),
    "mbap length 0": lambda tid, unit: mbap(tid, 0, unit, b"") + b"\x00",
    "mbap length too long": lambda tid, unit: mbap(tid, 0xFFFF, unit, bytes([3, 2, 4, 210])),
    "wrong protocol id": lambda tid, unit: mbap(tid, 5, unit, bytes([3, 2, 4, 210]), protocol=7),
    "garbage": lambda tid, unit: bytes(range(251, 256)) * 40,
}


WRONG_AT_ONCE = {
    "mbap length 2": "undecodable answer",
    "mbap length 1": "MBAP length 1",
    "mbap length too long": "MBAP length 65535",
    "wrong protocol id": "protocol id 7",
    "garbage": "protocol id",
}
"""What the unit's warning says of its last answer, for some of the cases."""


class MbapDevice:
    """Answers every request on every connection with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests = 0
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _, length, unit = struct.unpack(">HHHB", head)
                await reader.readexactly(length - 1)
                self.requests += 1
                writer.write(self.answer(tid, unit))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def mbap_device(answer: Answer) -> AsyncIterator[tuple[MbapDevice, int]]:
    """(device, port) on 127.0.0.1."""
    device = MbapDevice(answer)
    server = await asyncio.start_server(device.serve, "127.0.0.1", 0)
    try:
        yield device, server.sockets[0].getsockname()[1]
    finally:
        server.close()


def modbus_device(port: int) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "id": "liar",
            "modbus": {"host": "127.0.0.1", "port": port, "unit": 1, "timeout_s": 0.3},
            "points": [{"name": "p", "table": "holding", "address": 0, "type": "uint16"}],
        }
    )


@pytest.fixture
def quiet_pymodbus(monkeypatch: pytest.MonkeyPatch) -> None:
    """pymodbus' own log is silenced in the agent (edge_agent/devices.py), as here."""
    monkeypatch.setattr(logging.getLogger("pymodbus"), "level", logging.CRITICAL)


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.usefixtures("quiet_pymodbus")
async def test_a_malformed_answer_is_a_bad_answer_logged_once_without_a_traceback(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    polls = 4
    async with mbap_device(MALFORMED[case]) as (sim, port):
        driver = ModbusDriver(modbus_device(port))
        failures: list[str] = []
        try:
            # the driver's own logger too: an in-process `edge-agent probe` (an earlier
            # test's CliRunner) leaves it at ERROR, as a probe's one-shot process may
            with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, "drivers.modbus"):
                async with asyncio.timeout(20):
                    for _ in range(polls):
                        with pytest.raises(DeviceUnavailable) as failed:
                            await driver.read()
                        failures.append(failed.value.reason)
                        driver.bus.unit(1).retry_at = 0.0  # probe again at once
                    await asyncio.sleep(0.05)  # a late callback would log by now
        finally:
            await driver.aclose()
    assert sim.requests >= polls
    tracebacks = [r for r in caplog.records if r.exc_info or "Fatal error" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(noisy) == 1, noisy
    assert noisy[0].startswith(f"unit 1 on 127.0.0.1:{port} unavailable: timeout"), noisy
    if case in WRONG_AT_ONCE:  # the log says why, not only that it timed out
        assert WRONG_AT_ONCE[case] in noisy[0], noisy
    assert failures == ["timeout"] * polls
    assert driver.stats.timeouts == polls and driver.stats.errors == polls


async def test_the_link_reads_again_once_the_device_answers_well() -> None:
    answers = [MALFORMED["mbap length 2"], good]

    def answer(tid: int, unit: int) -> bytes:
        return answers[0](tid, unit)

    async with mbap_device(answer) as (_, port):
        driver = ModbusDriver(modbus_device(port))
        try:
            async with asyncio.timeout(10):
                with pytest.raises(DeviceUnavailable):
                    await driver.read()
                answers.pop(0)
                driver.bus.unit(1).retry_at = 0.0
                (reading,) = await driver.read()
        finally:
            await driver.aclose()
    assert reading.quality is Quality.GOOD and reading.value == 1234


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (mbap(1, 5, 1, bytes([3, 2, 0, 1])), None),
        (mbap(1, 2, 1, bytes([3])), None),  # for pymodbus' decoder to judge
        (mbap(1, 5, 1, b"")[:6], None),  # too little to tell yet
        (mbap(1, 1, 1, b""), "MBAP length 1"),
        (mbap(1, 255, 1, b""), "MBAP length 255"),
        (mbap(1, 5, 1, b"", protocol=1), "protocol id 1"),
    ],
)
def test_mbap_problem_reads_the_header_alone(frame: bytes, problem: str | None) -> None:
    found = mbap_problem(frame)
    assert found is None if problem is None else found is not None and problem in found
