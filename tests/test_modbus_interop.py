"""Interoperability: our Modbus driver and simulators against stacks that are not pymodbus.

Every other Modbus test has pymodbus on both ends, so a habit the two share (an address off
by one, a word order, a unit id, a function code, RTU framing) would pass unnoticed. Here
each side of our code meets an independent implementation instead:

* pyModbusTCP's ``ModbusServer`` (a Modbus TCP device with a data bank of limited size) is
  read and written by our driver and by ``edge-agent probe``;
* modbus-tk's ``RtuServer`` (RTU slaves on a socat pseudo-terminal pair, and the same behind
  socat acting as a serial server for RTU over TCP) is polled and written by our driver;
* minimalmodbus (an RTU master) reads and writes our simulated RTU units, decoding every
  type and byte order with its own code;
* pyModbusTCP's ``ModbusClient`` reads and writes our simulated TCP device, as unit 1 and as
  the 255 and 0 the Modbus TCP implementation guide has clients send to a device.

Registers a device is expected to hold are built here with ``struct`` from the definition of
each byte order, never with our codec. Every server listens on 127.0.0.1, on a free port,
or on a pseudo-terminal; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import minimalmodbus
import pytest
import serial
from modbus_tk import defines as tk
from modbus_tk import hooks as tk_hooks
from modbus_tk.modbus_rtu import RtuServer
from pyModbusTCP import utils as mbtcp_utils
from pyModbusTCP.client import ModbusClient
from pyModbusTCP.constants import MB_TIMEOUT_ERR
from pyModbusTCP.server import DataBank, DataHandler, ModbusServer

from drivers.base import DeviceUnavailable, Quality, Reading, Value
from drivers.modbus import ModbusDevice, ModbusPoint
from drivers.modbus.bus import ModbusBuses
from drivers.modbus.driver import ModbusDriver
from drivers.simulated.modbus_bus import SimulatedModbusBus
from drivers.simulated.modbus_server import SimulatedModbusDevice
from tests.support import free_port, rtu_crc, run_cli, terminate, wait_for
from tests.test_modbus_rtu import serial_line, socat

ORDERS = ("ABCD", "BADC", "CDAB", "DCBA")
NUMBERS: list[tuple[str, str, int | float]] = [
    ("int32", "i", -123_456_789),
    ("uint32", "I", 3_000_000_001),
    ("float32", "f", -1.5),
    ("int64", "q", -(2**62) - 12_345),
    ("uint64", "Q", 2**64 - 2),
    ("float64", "d", 1234.5678),
]
"""Multi-register types, with values that use every byte (and the sign where there is one)."""

STATUS = 0b1000_0000_0000_0101
"""A status word whose bits 0, 2 and 15 are set."""

ILLEGAL_ADDRESS = "exception 2: illegal data address"

MODBUS_TK_WARNING = "ignore:isSet:DeprecationWarning"
"""modbus-tk's server threads still call ``Event.isSet()``, deprecated since Python 3.10."""


# -- what a device holds, from the definitions alone ------------------------------------------


def wire(code: str, value: int | float, order: str) -> list[int]:
    """Registers holding ``value`` (a ``struct`` code) in ``order``, by the orders' definition:
    ABCD is big-endian, DCBA little-endian, BADC and CDAB are those two with the bytes of each
    register swapped (minimalmodbus' BYTEORDER_BIG_SWAP and BYTEORDER_LITTLE_SWAP)."""
    data = struct.pack(("<" if order in ("CDAB", "DCBA") else ">") + code, value)
    if order in ("BADC", "CDAB"):
        data = bytes(data[i ^ 1] for i in range(len(data)))
    return text_words(data)


def text_words(data: bytes) -> list[int]:
    """Registers holding ``data``, two bytes each, the first one high."""
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def p(name: str, table: str, address: int, type_name: str, **extra: Any) -> ModbusPoint:
    return ModbusPoint.model_validate(
        {"name": name, "table": table, "address": address, "type": type_name, **extra}
    )


@dataclass(frozen=True)
class Known:
    """A point and the value a device holding ``InteropMap.tables`` shows for it."""

    point: ModbusPoint
    value: Value


@dataclass
class InteropMap:
    """Points of every type and order, and the four tables from address 0 that hold them."""

    known: list[Known] = field(default_factory=list)
    holding: list[int] = field(default_factory=list)
    input: list[int] = field(default_factory=list)
    coil: list[bool] = field(default_factory=lambda: [False] * 18)
    discrete: list[bool] = field(default_factory=lambda: [False] * 31)

    @property
    def points(self) -> list[ModbusPoint]:
        return [k.point for k in self.known]

    def value(self, name: str) -> Value:
        return next(k.value for k in self.known if k.point.name == name)

    def point(self, name: str) -> ModbusPoint:
        return next(k.point for k in self.known if k.point.name == name)

    def add(
        self, name: str, table: str, type_name: str, value: Value, words: list[int], **extra: Any
    ) -> None:
        registers = self.holding if table == "holding" else self.input
        self.known.append(Known(p(name, table, len(registers), type_name, **extra), value))
        registers.extend(words)


def interop_map() -> InteropMap:
    m = InteropMap()
    m.add("negative", "holding", "int16", -1234, wire("h", -1234, "ABCD"))
    m.add("scaled", "holding", "uint16", 234.5, [2345], scale=0.1)
    m.add("swapped", "holding", "uint16", 0x1234, [0x3412], order="BADC")
    for type_name, code, value in NUMBERS:
        for order in ORDERS:
            words = wire(code, value, order)
            m.add(f"{type_name}_{order}", "holding", type_name, value, words, order=order)
    m.add("model", "holding", "string", "SD-2000", text_words(b"SD-2000\0"), length=4)
    swapped_text = text_words(b"TP4-02\0\0")  # each register's two characters swapped
    m.add("serial", "holding", "string", "PT-420", swapped_text, length=4, order="BADC")
    status = len(m.holding)
    m.holding.append(STATUS)
    for bit in (0, 1, 2, 15):
        on = bool(STATUS >> bit & 1)
        m.known.append(Known(p(f"bit{bit}", "holding", status, "bit", bit=bit), on))
    m.add("pressure", "input", "float32", 0.75, wire("f", 0.75, "CDAB"), order="CDAB", unit="MPa")
    m.add("temperature", "input", "int16", -12.3, [277], scale=0.1, offset=-40.0, unit="°C")
    m.add("hours", "input", "uint32", 70_001, wire("I", 70_001, "ABCD"))
    for address, on in {0: True, 3: True, 9: True, 17: False}.items():
        m.known.append(Known(p(f"coil{address}", "coil", address, "bool"), on))
        m.coil[address] = on
    for address, on in {0: False, 1: True, 30: True}.items():
        m.known.append(Known(p(f"discrete{address}", "discrete", address, "bool"), on))
        m.discrete[address] = on
    return m


MAP = interop_map()


def matches(got: Value, want: Value) -> bool:
    """Equal; a scaled value approximately; an unscaled integer must stay an ``int``."""
    if isinstance(want, float):
        return got == pytest.approx(want, rel=1e-12)
    return type(got) is type(want) and got == want


def by_name(readings: Sequence[Reading]) -> dict[str, Reading]:
    return {r.point: r for r in readings}


def good_values(readings: Sequence[Reading]) -> dict[str, Value]:
    bad = [r for r in readings if r.quality is not Quality.GOOD]
    assert not bad, bad
    return {r.point: r.value for r in readings}


def of_unit(k: Known, unit: int) -> Value:
    """A value per unit, so that an answer from the wrong unit cannot pass (exact in float32
    and in the scaled registers too)."""
    if isinstance(k.value, bool) or not isinstance(k.value, int | float):
        return k.value
    return k.value - (unit - 1)


# -- pyModbusTCP as the device --------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """A request as it reached pyModbusTCP's data handler: MBAP unit id, function, range."""

    unit: int
    function: int
    address: int
    count: int


class RecordingHandler(DataHandler):  # type: ignore[misc]  # DataHandler is untyped
    """pyModbusTCP's own handler, recording each request that reaches its data bank."""

    def __init__(self, bank: DataBank) -> None:
        super().__init__(data_bank=bank)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def _note(self, address: int, count: int, srv_info: Any) -> None:
        frame = srv_info.recv_frame
        with self._lock:
            self.seen.append(Seen(frame.mbap.unit_id, frame.pdu.func_code, address, count))

    def read_coils(self, address: int, count: int, srv_info: Any) -> Any:
        self._note(address, count, srv_info)
        return super().read_coils(address, count, srv_info)

    def read_d_inputs(self, address: int, count: int, srv_info: Any) -> Any:
        self._note(address, count, srv_info)
        return super().read_d_inputs(address, count, srv_info)

    def read_h_regs(self, address: int, count: int, srv_info: Any) -> Any:
        self._note(address, count, srv_info)
        return super().read_h_regs(address, count, srv_info)

    def read_i_regs(self, address: int, count: int, srv_info: Any) -> Any:
        self._note(address, count, srv_info)
        return super().read_i_regs(address, count, srv_info)

    def write_coils(self, address: int, bits_l: list[bool], srv_info: Any) -> Any:
        self._note(address, len(bits_l), srv_info)
        return super().write_coils(address, bits_l, srv_info)

    def write_h_regs(self, address: int, words_l: list[int], srv_info: Any) -> Any:
        self._note(address, len(words_l), srv_info)
        return super().write_h_regs(address, words_l, srv_info)


@dataclass(frozen=True)
class TcpDevice:
    """A pyModbusTCP server: 200 holding and 100 input registers, 64 coils and 64 inputs."""

    port: int
    bank: DataBank
    handler: RecordingHandler

    @property
    def seen(self) -> list[Seen]:
        return self.handler.seen

    def load(self, m: InteropMap) -> None:
        self.bank.set_holding_registers(0, m.holding)
        self.bank.set_input_registers(0, m.input)
        self.bank.set_coils(0, m.coil)
        self.bank.set_discrete_inputs(0, m.discrete)


@pytest.fixture
def tcp_device() -> Iterator[TcpDevice]:
    bank = DataBank(coils_size=64, d_inputs_size=64, h_regs_size=200, i_regs_size=100)
    handler = RecordingHandler(bank)
    server = ModbusServer(host="127.0.0.1", port=free_port(), no_block=True, data_hdl=handler)
    server.start()
    try:
        yield TcpDevice(server.port, bank, handler)
    finally:
        server.stop()


MakeDriver = Callable[..., ModbusDriver]


@pytest.fixture
async def driver() -> AsyncIterator[MakeDriver]:
    """Builds our drivers for a TCP port and points, as the agent's config does; all closed."""
    made: list[ModbusDriver] = []

    def make(port: int, points: Sequence[ModbusPoint], **extra: Any) -> ModbusDriver:
        modbus = {"host": "127.0.0.1", "port": port, "timeout_s": 0.5, **extra.pop("modbus", {})}
        device = ModbusDevice.model_validate(
            {"id": "dev-1", "modbus": modbus, "points": [q.model_dump() for q in points], **extra}
        )
        made.append(ModbusDriver(device))
        return made[-1]

    yield make
    for each in made:
        await each.aclose()


async def test_our_driver_decodes_every_type_and_order_from_pymodbustcp(
    tcp_device: TcpDevice, driver: MakeDriver
) -> None:
    tcp_device.load(MAP)

    got = good_values(await driver(tcp_device.port, MAP.points).read())

    for k in MAP.known:
        assert matches(got[k.point.name], k.value), (k.point.name, got[k.point.name], k.value)
    assert tcp_device.seen == [  # 0-based addresses, as on the wire; one request per block
        Seen(1, 3, 0, len(MAP.holding)),
        Seen(1, 4, 0, len(MAP.input)),
        Seen(1, 1, 0, 18),  # coils 0, 3, 9 and 17: holes read through
        Seen(1, 2, 0, 2),
        Seen(1, 2, 30, 1),  # 29 inputs past the last one: more than max_gap
    ]


WRITABLE = [
    p("setpoint", "holding", 0, "int16", scale=0.1),
    p("limit", "holding", 1, "float32", order="CDAB"),
    p("reset", "holding", 5, "bit", bit=3),
    p("label", "holding", 6, "string", length=3),
    p("offset", "holding", 9, "int32", order="BADC"),
    p("siren", "coil", 3, "bool"),
]


async def test_our_writes_land_in_pymodbustcps_data_bank(
    tcp_device: TcpDevice, driver: MakeDriver
) -> None:
    bank = tcp_device.bank
    bank.set_holding_registers(5, [0b1000_0000_0000_0001])
    writer = driver(tcp_device.port, WRITABLE)

    await writer.write("setpoint", -21.5)
    await writer.write("limit", -1e-3)
    await writer.write("reset", True)
    await writer.write("label", "ok")
    await writer.write("offset", -7)
    await writer.write("siren", True)

    assert bank.get_holding_registers(0, 1) == [0x10000 - 215]
    assert bank.get_holding_registers(1, 2) == wire("f", -1e-3, "CDAB")
    assert bank.get_holding_registers(5, 1) == [0b1000_0000_0000_1001]  # other bits kept
    assert bank.get_holding_registers(6, 3) == text_words(b"ok\0\0\0\0")
    assert bank.get_holding_registers(9, 2) == wire("i", -7, "BADC")
    assert bank.get_coils(3, 1) == [True]
    assert [(s.function, s.address, s.count) for s in tcp_device.seen] == [
        (6, 0, 1),  # one register: write single register
        (16, 1, 2),  # two: write multiple registers
        (3, 5, 1),  # a bit: read the register,
        (6, 5, 1),  # change the bit, write it back
        (16, 6, 3),
        (16, 9, 2),
        (5, 3, 1),  # a coil: write single coil
    ]
    got = good_values(await writer.read())
    assert got["setpoint"] == pytest.approx(-21.5) and got["limit"] == pytest.approx(-1e-3)
    assert got["reset"] is True and got["label"] == "ok" and got["offset"] == -7
    assert got["siren"] is True


GAPPY = [
    p("a", "holding", 100, "uint16"),
    p("b", "holding", 105, "float32"),
    p("c", "holding", 120, "int16"),
    p("d", "holding", 140, "uint16"),  # 19 registers after c: past max_gap
    p("k1", "coil", 1, "bool"),
    p("k7", "coil", 7, "bool"),
    p("k40", "coil", 40, "bool"),
]


@pytest.mark.parametrize(
    ("options", "requests"),
    [
        ({}, [(3, 100, 21), (3, 140, 1), (1, 1, 7), (1, 40, 1)]),
        (
            {"no_gap_reads": True},
            [(3, 100, 1), (3, 105, 2), (3, 120, 1), (3, 140, 1), (1, 1, 1), (1, 7, 1), (1, 40, 1)],
        ),
    ],
)
async def test_coalesced_reads_span_holes_at_pymodbustcp(
    tcp_device: TcpDevice,
    driver: MakeDriver,
    options: dict[str, Any],
    requests: list[tuple[int, int, int]],
) -> None:
    bank = tcp_device.bank
    bank.set_holding_registers(100, [0xDEAD] * 41)  # what the holes hold must not matter
    bank.set_holding_registers(100, [4711])
    bank.set_holding_registers(105, wire("f", 6.25, "ABCD"))
    bank.set_holding_registers(120, wire("h", -3, "ABCD"))
    bank.set_holding_registers(140, [65535])
    bank.set_coils(0, [i in (1, 4, 40) for i in range(41)])

    got = good_values(await driver(tcp_device.port, GAPPY, **options).read())

    assert got == {"a": 4711, "b": 6.25, "c": -3, "d": 65535, "k1": True, "k7": False, "k40": True}
    assert [(s.function, s.address, s.count) for s in tcp_device.seen] == requests


EDGE = [
    p("first", "holding", 190, "uint16"),
    p("last", "holding", 199, "uint16"),  # the bank's last holding register
    p("past_end", "holding", 204, "uint16"),
    p("level", "input", 10, "uint16"),
    p("straddles", "input", 99, "uint32"),  # its second register is past the bank
    p("siren", "coil", 5, "bool"),
    p("ghost_coil", "coil", 70, "bool"),
]


async def test_addresses_past_pymodbustcps_bank_read_bad_and_the_rest_good(
    tcp_device: TcpDevice, driver: MakeDriver
) -> None:
    bank = tcp_device.bank
    bank.set_holding_registers(190, [190])
    bank.set_holding_registers(199, [199])
    bank.set_input_registers(10, [10])
    bank.set_coils(5, [True])
    reader = driver(tcp_device.port, EDGE)

    first = by_name(await reader.read())

    bad = {name for name, r in first.items() if r.quality is not Quality.GOOD}
    assert bad == {"past_end", "straddles", "ghost_coil"}
    assert {first[name].reason for name in bad} == {ILLEGAL_ADDRESS}
    assert all(first[name].value is None for name in bad)
    good = {name: r.value for name, r in first.items() if name not in bad}
    assert good == {"first": 190, "last": 199, "level": 10, "siren": True}
    assert [(s.function, s.address, s.count) for s in tcp_device.seen] == [
        (3, 190, 15),  # one block, refused with exception 2: split into hole-free runs
        (3, 190, 1), (3, 199, 1), (3, 204, 1),
        (4, 10, 1), (4, 99, 2),  # 89 registers apart: two blocks from the start
        (1, 5, 1), (1, 70, 1),
    ]  # fmt: skip

    tcp_device.seen.clear()
    second = by_name(await reader.read())  # the split is remembered

    assert {name for name, r in second.items() if r.quality is not Quality.GOOD} == bad
    assert [(s.function, s.address, s.count) for s in tcp_device.seen] == [
        (3, 190, 1), (3, 199, 1), (3, 204, 1), (4, 10, 1), (4, 99, 2), (1, 5, 1), (1, 70, 1),
    ]  # fmt: skip
    assert reader.stats.timeouts == 0


@pytest.mark.parametrize("unit", [0, 1, 247])
async def test_the_configured_unit_id_is_what_pymodbustcp_receives(
    tcp_device: TcpDevice, driver: MakeDriver, unit: int
) -> None:
    tcp_device.load(MAP)
    points = [MAP.point("negative"), MAP.point("hours"), MAP.point("coil3")]
    reader = driver(tcp_device.port, points, modbus={"unit": unit})

    got = good_values(await reader.read())
    await reader.write("negative", -5)

    assert got == {"negative": -1234, "hours": 70_001, "coil3": True}
    assert tcp_device.bank.get_holding_registers(0, 1) == [0x10000 - 5]
    assert {s.unit for s in tcp_device.seen} == {unit}
    assert len(tcp_device.seen) == 4


def test_the_probe_reads_pymodbustcp_and_shows_where_its_bank_ends(
    tcp_device: TcpDevice,
) -> None:
    tcp_device.bank.set_holding_registers(196, [0xBEEF, 2, 3, 0xFFFF])
    args = ["--host", "127.0.0.1", "--port", str(tcp_device.port), "--table", "holding"]
    args += ["--address", "196", "--count", "6", "--timeout", "0.5", "--json"]

    result = run_cli("edge-agent", "probe", "modbus", *args)

    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["unit"] == 1
    rows = [(q["address"], q["registers"], q["value"], q["reason"]) for q in out["points"]]
    assert rows == [
        (196, [0xBEEF], 0xBEEF, None),
        (197, [2], 2, None),
        (198, [3], 3, None),
        (199, [0xFFFF], 0xFFFF, None),
        (200, [], None, ILLEGAL_ADDRESS),
        (201, [], None, ILLEGAL_ADDRESS),
    ]


# -- our simulators, read by other masters -------------------------------------------------

BYTEORDER = {
    "ABCD": minimalmodbus.BYTEORDER_BIG,
    "BADC": minimalmodbus.BYTEORDER_BIG_SWAP,
    "CDAB": minimalmodbus.BYTEORDER_LITTLE_SWAP,
    "DCBA": minimalmodbus.BYTEORDER_LITTLE,
}
"""Our byte order names in minimalmodbus' terms."""

RTU_UNITS = (1, 2)


@pytest.fixture
async def rtu_sim(tmp_path: Path) -> AsyncIterator[tuple[SimulatedModbusBus, str]]:
    """Units 1 and 2 serving MAP, each with its own values, on one end of a pty pair."""
    with serial_line(tmp_path) as (devices_end, master_end):
        units = dict.fromkeys(RTU_UNITS, MAP.points)
        async with SimulatedModbusBus(units, serial=devices_end) as sim:
            for unit in RTU_UNITS:
                for k in MAP.known:
                    await sim.unit(unit).set(k.point.name, of_unit(k, unit))
            yield sim, master_end


def instrument(port: str, unit: int) -> minimalmodbus.Instrument:
    inst = minimalmodbus.Instrument(port, unit)
    inst.serial.baudrate = 19200
    inst.serial.parity = serial.PARITY_NONE  # Linux ptys refuse parity bits
    inst.serial.timeout = 0.3
    return inst


def minimalmodbus_reads(inst: minimalmodbus.Instrument, point: ModbusPoint) -> Value:
    """``point`` as minimalmodbus decodes it: its own integers, floats, strings and orders."""
    a, fc, kind = point.address, 3 if point.table == "holding" else 4, point.type
    if kind == "bool":
        return bool(inst.read_bit(a, functioncode=1 if point.table == "coil" else 2))
    if kind == "bit":
        return bool(inst.read_register(a, functioncode=fc) >> (point.bit or 0) & 1)
    if kind == "string":
        words = inst.read_registers(a, point.count, functioncode=fc)
        swap = point.order == "BADC"
        data = b"".join(w.to_bytes(2, "little" if swap else "big") for w in words)
        text = inst.read_string(a, point.count, functioncode=fc) if not swap else data.decode()
        return text.rstrip("\0 ")
    if kind in ("int16", "uint16"):
        if point.scale == 0.1 and point.offset == 0:
            return float(inst.read_register(a, 1, functioncode=fc))  # minimalmodbus scales
        raw = int(inst.read_register(a, functioncode=fc, signed=kind == "int16"))
        if point.order == "BADC":
            raw = int.from_bytes(raw.to_bytes(2, "little"), "big")
        if point.scale == 1 and point.offset == 0:
            return raw
        return raw * point.scale + point.offset
    order = BYTEORDER[point.order]
    if kind.startswith("float"):
        return float(inst.read_float(a, fc, point.count, order))
    return int(inst.read_long(a, fc, kind.startswith("int"), order, point.count))


async def test_minimalmodbus_reads_every_type_and_order_from_our_rtu_units(
    rtu_sim: tuple[SimulatedModbusBus, str],
) -> None:
    sim, master_end = rtu_sim
    assert await sim.unit(1).get_raw("holding", 0, len(MAP.holding)) == MAP.holding
    assert await sim.unit(1).get_raw("input", 0, len(MAP.input)) == MAP.input

    def read_all() -> dict[int, dict[str, Value]]:
        got: dict[int, dict[str, Value]] = {}
        for unit in RTU_UNITS:
            inst = instrument(master_end, unit)
            try:
                got[unit] = {k.point.name: minimalmodbus_reads(inst, k.point) for k in MAP.known}
            finally:
                inst.serial.close()
        absent = instrument(master_end, 3)
        try:
            with pytest.raises(minimalmodbus.NoResponseError):
                absent.read_register(0)
        finally:
            absent.serial.close()
        return got

    async with asyncio.timeout(30):
        got = await asyncio.to_thread(read_all)

    for unit in RTU_UNITS:
        for k in MAP.known:
            want = of_unit(k, unit)
            assert same({k.point.name: got[unit][k.point.name]}, {k.point.name: want}), unit
    assert sim.received[3] == 1
    assert sim.unit(1).requests[3] > 0 and sim.unit(1).requests[4] > 0


async def test_minimalmodbus_writes_reach_our_rtu_unit(
    rtu_sim: tuple[SimulatedModbusBus, str],
) -> None:
    sim, master_end = rtu_sim
    unit = sim.unit(2)
    unit.requests.clear()
    at = {k.point.name: k.point.address for k in MAP.known}

    def write_all() -> None:
        inst = instrument(master_end, 2)
        try:
            inst.write_register(at["negative"], -4321, signed=True, functioncode=6)
            inst.write_register(at["scaled"], 99.9, 1)  # function 16, minimalmodbus' default
            inst.write_long(at["uint32_CDAB"], 4_000_000_000, False, BYTEORDER["CDAB"])
            inst.write_float(at["float64_BADC"], -0.125, 4, BYTEORDER["BADC"])
            inst.write_long(at["int64_DCBA"], -5, True, BYTEORDER["DCBA"], 4)
            inst.write_string(at["model"], "OK", 4)
            inst.write_bit(3, 0, functioncode=5)
            inst.write_bits(0, [0, 1, 1])  # function 15
        finally:
            inst.serial.close()

    async with asyncio.timeout(30):
        await asyncio.to_thread(write_all)

    assert await unit.get("negative") == -4321
    assert await unit.get("scaled") == pytest.approx(99.9)
    assert await unit.get("uint32_CDAB") == 4_000_000_000
    assert await unit.get("float64_BADC") == -0.125
    assert await unit.get("int64_DCBA") == -5
    assert await unit.get("model") == "OK"
    assert await unit.get_raw("coil", 0, 4) == [False, True, True, False]
    assert dict(unit.requests) == {6: 1, 16: 5, 5: 1, 15: 1}
    assert await sim.unit(1).get("negative") == -1234  # the other unit is untouched


@pytest.fixture
async def tcp_sim() -> AsyncIterator[SimulatedModbusDevice]:
    """Our simulated Modbus TCP device (unit 1) serving MAP on 127.0.0.1."""
    async with SimulatedModbusDevice(MAP.points) as sim:
        for k in MAP.known:
            await sim.set(k.point.name, k.value)
        yield sim


def client(port: int, unit: int) -> ModbusClient:
    return ModbusClient(host="127.0.0.1", port=port, unit_id=unit, timeout=0.5)


async def test_pymodbustcp_client_reads_and_writes_our_tcp_device(
    tcp_sim: SimulatedModbusDevice,
) -> None:
    sim = tcp_sim
    at = {k.point.name: k.point.address for k in MAP.known}

    def talk() -> dict[str, Any]:
        c = client(sim.port, 1)
        try:
            out: dict[str, Any] = {
                "holding": c.read_holding_registers(0, len(MAP.holding)),
                "input": c.read_input_registers(0, len(MAP.input)),
                "coil": c.read_coils(0, len(MAP.coil)),
                "discrete": c.read_discrete_inputs(0, len(MAP.discrete)),
            }
            out["written"] = [
                c.write_single_register(at["negative"], -7 & 0xFFFF),
                c.write_multiple_registers(at["float32_CDAB"], wire("f", 2.5, "CDAB")),
                c.write_single_coil(17, True),
                c.write_multiple_coils(0, [False, False]),
            ]
            return out
        finally:
            c.close()

    async with asyncio.timeout(10):
        out = await asyncio.to_thread(talk)

    assert out["holding"] == MAP.holding  # what our simulator serves is the definition's
    assert out["input"] == MAP.input
    assert out["coil"] == MAP.coil and out["discrete"] == MAP.discrete
    words = {k.point.name: out["holding"][at[k.point.name] :][: k.point.count] for k in MAP.known}
    long_ = mbtcp_utils.word_list_to_long  # pyModbusTCP's own decoding
    assert mbtcp_utils.decode_ieee(long_(words["float32_ABCD"])[0]) == -1.5
    assert mbtcp_utils.decode_ieee(long_(words["float32_CDAB"], big_endian=False)[0]) == -1.5
    float64 = long_(words["float64_CDAB"], big_endian=False, long_long=True)[0]
    assert mbtcp_utils.decode_ieee(float64, double=True) == 1234.5678
    int64 = long_(words["int64_ABCD"], long_long=True)[0]
    assert mbtcp_utils.get_2comp(int64, 64) == MAP.value("int64_ABCD")
    assert long_(words["uint32_CDAB"], big_endian=False)[0] == 3_000_000_001
    assert mbtcp_utils.get_2comp(words["negative"][0]) == -1234
    assert out["written"] == [True] * 4
    assert await sim.get("negative") == -7
    assert await sim.get("float32_CDAB") == 2.5
    assert await sim.get("coil17") is True and await sim.get("coil0") is False
    assert {code: sim.requests[code] for code in (6, 16, 5, 15)} == {6: 1, 16: 1, 5: 1, 15: 1}


async def test_our_tcp_device_answers_unit_255_and_0_as_the_modbus_tcp_guide_asks(
    tcp_sim: SimulatedModbusDevice,
) -> None:
    """The guide has a client address a device on its own IP address with 255 (libmodbus'
    default, many PLCs) and accepts 0 (some HMIs). The answer echoes the unit id asked
    (pyModbusTCP checks it); a unit id the device is not still gets no answer."""
    sim = tcp_sim
    status = MAP.point("bit0").address

    def talk(unit: int, value: int) -> tuple[Any, Any, bool, int]:
        c = client(sim.port, unit)
        c.timeout = 0.3
        try:
            words = c.read_holding_registers(0, len(MAP.holding))
            coils = c.read_coils(0, len(MAP.coil))
            return words, coils, bool(c.write_single_register(status, value)), c.last_error
        finally:
            c.close()

    async with asyncio.timeout(10):
        answers = {u: await asyncio.to_thread(talk, u, u) for u in (255, 0, 1, 2)}

    for unit in (255, 0, 1):
        words, coils, written, _ = answers[unit]
        assert words[:status] == MAP.holding[:status] and coils == MAP.coil, unit
        assert written, unit
    assert answers[2] == (None, None, False, MB_TIMEOUT_ERR)
    assert await sim.get_raw("holding", status, 1) == [1]  # unit 1 wrote last; 2 did not land
    assert {u: sim.received[u] for u in (255, 0, 1, 2)} == {255: 3, 0: 3, 1: 3, 2: 3}


# -- modbus-tk as RTU slaves: our driver's RTU framing and timing ---------------------------

METER = [
    p("energy", "holding", 0, "uint32", order="CDAB"),
    p("setpoint", "holding", 2, "int16", scale=0.1),
    p("status", "holding", 3, "uint16"),
    p("fault", "holding", 3, "bit", bit=3),
    p("limit", "holding", 10, "float32"),
    p("total", "holding", 12, "int64", order="DCBA"),
    p("flow", "input", 0, "float32", order="BADC"),
    p("pump", "coil", 2, "bool"),
]
"""Holding registers 0-3 and 10-15 exist, 4-9 do not: a read over the hole is refused."""

TK_UNITS = (1, 2, 7)


@dataclass(frozen=True)
class Meter:
    """What unit ``unit`` of the modbus-tk line holds: different on every unit."""

    unit: int

    @property
    def values(self) -> dict[str, Value]:
        u = self.unit
        return {
            "energy": 100_000 * u + 7,
            "setpoint": 20.0 + u,
            "status": 0b1000 if u % 2 else 0,
            "fault": u % 2 == 1,
            "limit": 0.5 * u,
            "total": -(10**15) * u,
            "flow": 1.25 * u,
            "pump": u % 2 == 1,
        }

    def load(self, server: RtuServer) -> None:
        """A modbus-tk slave holding ``values``, laid out from the orders' definitions."""
        u = self.unit
        slave = server.add_slave(u)
        slave.add_block("low", tk.HOLDING_REGISTERS, 0, 4)
        slave.add_block("high", tk.HOLDING_REGISTERS, 10, 6)
        slave.add_block("inputs", tk.ANALOG_INPUTS, 0, 2)
        slave.add_block("coils", tk.COILS, 0, 8)
        slave.set_values("low", 0, [*wire("I", 100_000 * u + 7, "CDAB"), 200 + 10 * u, 8 * (u % 2)])
        slave.set_values(
            "high", 10, [*wire("f", 0.5 * u, "ABCD"), *wire("q", -(10**15) * u, "DCBA")]
        )
        slave.set_values("inputs", 0, wire("f", 1.25 * u, "BADC"))
        slave.set_values("coils", 2, [u % 2])


@contextmanager
def modbus_tk_line(line_end: str, units: Sequence[int]) -> Iterator[tuple[RtuServer, list[bytes]]]:
    """modbus-tk's RTU server on ``line_end`` with a meter per unit; the request frames it
    reads, as they came off the line."""
    frames: list[bytes] = []

    def record(args: tuple[RtuServer, bytes]) -> None:
        frames.append(args[1])

    port = serial.Serial(line_end, baudrate=19200, parity=serial.PARITY_NONE)
    server = RtuServer(port)
    for unit in units:
        Meter(unit).load(server)
    tk_hooks.install_hook("modbus_rtu.RtuServer.after_read", record)
    server.start()
    try:
        yield server, frames
    finally:
        server.stop()
        tk_hooks.uninstall_hook("modbus_rtu.RtuServer.after_read", record)
        port.close()


def meter(device_id: str, unit: int, **modbus: Any) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "id": device_id,
            "modbus": {"unit": unit, "timeout_s": 0.5, "retries": 1, **modbus},
            "points": [q.model_dump() for q in METER],
        }
    )


def same(got: dict[str, Value], want: dict[str, Value]) -> bool:
    return got.keys() == want.keys() and all(
        got[k] == pytest.approx(want[k]) if isinstance(want[k], float) else got[k] == want[k]
        for k in want
    )


@pytest.mark.filterwarnings(MODBUS_TK_WARNING)
async def test_our_driver_polls_and_writes_modbus_tk_rtu_slaves_on_one_line(
    tmp_path: Path,
) -> None:
    with (
        serial_line(tmp_path) as (devices_end, master_end),
        modbus_tk_line(devices_end, TK_UNITS) as (server, frames),
    ):
        line = {"serial": master_end, "baudrate": 19200, "parity": "N"}
        buses = ModbusBuses()
        drivers = [ModbusDriver(meter(f"meter-{u}", u, **line), buses) for u in TK_UNITS]
        absent = ModbusDriver(meter("absent", 9, **line | {"retries": 0}), buses)
        try:
            async with asyncio.timeout(20):
                for _ in range(3):  # all at once: the bus takes them in turn
                    polls = await asyncio.gather(*(d.read() for d in drivers))
                    for unit, readings in zip(TK_UNITS, polls, strict=True):
                        assert same(good_values(readings), Meter(unit).values), unit
                with pytest.raises(DeviceUnavailable, match="timeout"):
                    await absent.read()
                writer = drivers[1]
                await writer.write("setpoint", -21.5)  # function 6
                await writer.write("limit", 1e-3)  # function 16
                await writer.write("pump", True)  # function 5
                await writer.write("fault", True)  # function 3, then 6
                after = good_values(await writer.read())
        finally:
            for each in (*drivers, absent):
                await each.aclose()
    slave = server.get_slave(2)
    assert slave.get_values("low", 2, 2) == (0x10000 - 215, 0b1000)  # the bit set, no other
    assert list(slave.get_values("high", 10, 2)) == wire("f", 1e-3, "ABCD")
    assert slave.get_values("coils", 2, 1) == (1,)
    assert after["setpoint"] == pytest.approx(-21.5) and after["fault"] is True
    assert all(rtu_crc(f[:-2]) == f[-2:] for f in frames)
    asked = [(f[0], f[1], *struct.unpack(">HH", f[2:6])) for f in frames]
    assert [(a, n) for u, fc, a, n in asked if (u, fc) == (1, 3)] == [
        (0, 16),  # over the hole: refused with exception 2, and split
        *[(0, 4), (10, 6)] * 3,  # the split is remembered
    ]
    assert [(u, fc) for u, fc, _, _ in asked[-10:]] == [
        (9, 3),  # the absent unit: no answer, no retry
        (2, 6), (2, 16), (2, 5), (2, 3), (2, 6),  # the writes
        (2, 3), (2, 3), (2, 4), (2, 1),  # the poll after them
    ]  # fmt: skip


@contextmanager
def serial_server(line_end: str, workdir: Path) -> Iterator[int]:
    """socat joining a TCP port on 127.0.0.1 to ``line_end``, as a serial server joins its
    socket to its RS-485 port: bytes pass unchanged both ways. Yields the port."""
    port = free_port()
    log = workdir / "serial-server.log"
    with log.open("wb") as err:
        listen = f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"
        proc = subprocess.Popen(
            [socat(), "-d", "-d", listen, f"OPEN:{line_end},raw,echo=0"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_for(lambda: "listening on" in log.read_text(), 10, what="socat listening")
        yield port
    finally:
        terminate(proc)


@pytest.mark.filterwarnings(MODBUS_TK_WARNING)
async def test_our_driver_reads_rtu_over_tcp_through_a_serial_server(tmp_path: Path) -> None:
    """RTU frames through a socket to modbus-tk on a serial line, as to a meter behind a
    serial server (the ``framer: rtu`` entry of ``drivers/modbus/sample.yaml``)."""
    with (
        serial_line(tmp_path) as (devices_end, master_end),
        modbus_tk_line(devices_end, (3,)) as (server, frames),
        serial_server(master_end, tmp_path) as port,
    ):
        reader = ModbusDriver(meter("meter-3", 3, host="127.0.0.1", port=port, framer="rtu"))
        try:
            async with asyncio.timeout(10):
                for _ in range(2):
                    assert same(good_values(await reader.read()), Meter(3).values)
                await reader.write("energy", 123_456_789)  # function 16, low word first
        finally:
            await reader.aclose()
    assert list(server.get_slave(3).get_values("low", 0, 2)) == wire("I", 123_456_789, "CDAB")
    assert all(rtu_crc(f[:-2]) == f[-2:] for f in frames)
    assert [f[1] for f in frames] == [3, 3, 3, 4, 1, 3, 3, 4, 1, 16]  # refused once, split
