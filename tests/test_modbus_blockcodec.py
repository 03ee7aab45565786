"""The block decoder against the per-point codec, on random maps and random registers.

``BlockDecoder`` must give exactly what ``codec.decode`` / ``decode_bits`` give point by
point: the same type (an unscaled integer stays an ``int``), the same float bit for bit
(NaN payloads, infinities, -0.0), and a ``ValueError`` whenever the codec would refuse any
point of the block (the driver then asks the codec point by point). Maps mix every type
and order, gaps, overlapping points, scale and offset, bits of a register and strings;
registers are random words with known values written over some points through the
independent oracle of ``test_modbus_codec``. Seeded, bounded loops: no hypothesis.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import pytest

from drivers.base import Value
from drivers.modbus import ModbusPoint
from drivers.modbus.blockcodec import BlockDecoder, layout
from drivers.modbus.codec import decode, decode_bits
from drivers.modbus.plan import ReadBlock, plan_reads
from drivers.modbus.types import ORDERS, TYPES, Table, TypeName
from tests.test_modbus_codec import string_wire, wire

REGISTER_TYPES: list[TypeName] = [
    name for name, row in TYPES.items() if "holding" in row.tables and name != "string"
]
SCALES = [1.0, 1.0, 0.1, 0.001, -2.5, 10.0, 3.0]
OFFSETS = [0.0, 0.0, -40.0, 1.5, 273.15, -0.5]
FLOATS = [0.0, -0.0, 1.5, -1.5e-300, 1e-45, 3.4028234663852886e38, math.nan, math.inf, -math.inf]


def make_point(name: str, table: Table, address: int, type_name: str, **extra: Any) -> ModbusPoint:
    return ModbusPoint.model_validate(
        {"name": name, "table": table, "address": address, "type": type_name, **extra}
    )


def random_point(rng: random.Random, name: str, table: Table, base: int, span: int) -> ModbusPoint:
    """Any point the config accepts in a register table, within ``span`` of ``base``."""
    type_name = rng.choice([*REGISTER_TYPES, "string"])
    row = TYPES[type_name]
    extra: dict[str, Any] = {"order": rng.choice(sorted(row.orders))}
    if type_name == "bit":
        extra["bit"] = rng.randrange(16)
    if type_name == "string":
        extra["length"] = rng.randint(1, 6)
    if row.numeric and rng.random() < 0.5:
        extra["scale"] = rng.choice([*SCALES, rng.uniform(-100, 100)])
        extra["offset"] = rng.choice([*OFFSETS, rng.uniform(-1000, 1000)])
    count = row.registers or extra["length"]
    address = base + rng.randrange(max(1, span - count + 1))
    return make_point(name, table, address, type_name, **extra)


def random_raw(rng: random.Random, point: ModbusPoint) -> list[int]:
    """Registers a device could send for ``point``, from the independent oracle."""
    code = point.datatype.struct
    if point.type == "string":
        size = 2 * point.count
        text = bytes(rng.choice(b"AZaz09-_ ") for _ in range(rng.randrange(size + 1)))
        pad = rng.choice([b"\x00", b" "])
        data = text.ljust(size, pad)
        if rng.random() < 0.03:  # not ASCII: the codec refuses it
            data = data[:-1] + bytes([rng.randrange(128, 256)])
        return string_wire(data, point.order)
    if point.type == "bit":
        return [rng.randrange(65536)]
    if code in "fd":
        value: int | float = rng.choice([*FLOATS, rng.uniform(-1e6, 1e6)])
        if code == "f" and math.isfinite(value) and abs(value) > 3.4e38:
            value = 1.0
    else:
        bits = 8 * struct.calcsize(code)
        low = -(2 ** (bits - 1)) if code.islower() else 0
        value = rng.choice([low, low + 2**bits - 1, rng.randrange(low, low + 2**bits)])
    return wire(point.type, value, point.order)


def expected(block: ReadBlock, registers: list[int]) -> dict[str, Value] | None:
    """The codec's value of every point, or None when it refuses any of them."""
    out: dict[str, Value] = {}
    for point in block.points:
        start = point.address - block.address
        try:
            out[point.name] = decode(point, registers[start : start + point.count])
        except ValueError:
            return None
    return out


def identical(got: Value, want: Value) -> bool:
    """Same type and same value; floats compared bit for bit (NaN payload, -0.0)."""
    if type(got) is not type(want):
        return False
    if isinstance(got, float) and isinstance(want, float):
        return struct.pack(">d", got) == struct.pack(">d", want)
    return got == want


def decoded(block: ReadBlock, registers: list[int]) -> dict[str, Value]:
    decoder = BlockDecoder(block)
    return dict(zip((p.name for p in decoder.points), decoder.decode(registers, ()), strict=True))


def check(block: ReadBlock, registers: list[int]) -> bool:
    """The decoder agrees with the codec on ``block``; True if it decoded (did not refuse)."""
    decoder = BlockDecoder(block)
    assert sorted(p.name for p in decoder.points) == sorted(p.name for p in block.points)
    want = expected(block, registers)
    try:
        values = decoder.decode(registers, ())
    except ValueError:
        # allowed only where the codec refuses a point, or a register no point uses is bad
        assert want is None or any(not 0 <= word <= 0xFFFF for word in registers)
        return False
    assert want is not None, "the decoder accepted what the codec refuses"
    got = dict(zip((p.name for p in decoder.points), values, strict=True))
    for name, value in want.items():
        assert identical(got[name], value), (name, got[name], value)
    return True


def random_register_map(rng: random.Random, n: int, span: int) -> list[ModbusPoint]:
    base = rng.randrange(200)
    return [random_point(rng, f"p{i}", "holding", base, span) for i in range(n)]


def fill(rng: random.Random, block: ReadBlock, known: float) -> list[int]:
    """Random words, with oracle values written over a share ``known`` of the points.

    Strings are written last and always (random words are hardly ever ASCII, and a block
    the codec refuses compares nothing), so points overlapping them read text as numbers.
    """
    registers = [rng.randrange(65536) for _ in range(block.count)]
    points = rng.sample(block.points, len(block.points))
    for point in sorted(points, key=lambda p: p.type == "string"):
        if point.type == "string" or rng.random() < known:
            start = point.address - block.address
            registers[start : start + point.count] = random_raw(rng, point)
    return registers


def test_layouts_follow_the_order_table() -> None:
    # one swap (bytes or words) reads the swapped copy; reversed words read little-endian
    assert {order: layout(order) for order in ORDERS} == {
        "ABCD": (False, False),
        "BADC": (True, False),
        "CDAB": (True, True),
        "DCBA": (False, True),
    }


@pytest.mark.parametrize("seed", range(8))
def test_random_maps_decode_as_the_codec_does(seed: int) -> None:
    rng = random.Random(seed)
    decoded = tried = 0
    for _ in range(60):
        points = random_register_map(rng, rng.randint(1, 40), rng.choice([8, 40, 125]))
        for block in plan_reads(points, max_gap=rng.choice([0, 3, 16, 125]), max_registers=125):
            for known in (1.0, 0.7, 0.0):
                decoded += check(block, fill(rng, block, known))
                tried += 1
    assert decoded > tried / 2  # most cases decode: the comparison is not vacuous


@pytest.mark.parametrize("seed", range(4))
def test_blocks_with_holes_at_both_ends(seed: int) -> None:
    """A split or a probe range may start before its first point and end after its last."""
    rng = random.Random(100 + seed)
    for _ in range(150):
        points = random_register_map(rng, rng.randint(1, 12), 20)
        first = min(p.address for p in points)
        last = max(p.address + p.count for p in points)
        lead, trail = rng.randrange(min(first, 5) + 1), rng.randrange(6)
        block = ReadBlock("input", first - lead, last - first + lead + trail, tuple(points))
        check(block, fill(rng, block, 0.8))


def test_every_type_and_order_at_once_with_nans_and_extremes() -> None:
    points: list[ModbusPoint] = []
    registers: list[int] = []
    for type_name in REGISTER_TYPES:
        for order in sorted(TYPES[type_name].orders):
            for scale, offset in ((1.0, 0.0), (0.1, -40.0)):
                numeric = TYPES[type_name].numeric
                extra: dict[str, Any] = {"order": order}
                if numeric:
                    extra |= {"scale": scale, "offset": offset}
                elif scale != 1.0:
                    continue
                if type_name == "bit":
                    extra["bit"] = len(points) % 16
                p = make_point(f"p{len(points)}", "holding", len(registers), type_name, **extra)
                points.append(p)
                registers += random_raw(random.Random(len(points)), p)
    nan = make_point("nan", "holding", len(registers), "float32", order="CDAB", scale=2.0)
    points.append(nan)
    registers += [0x0001, 0x7FC0]  # a quiet NaN with a payload, low word first
    block = ReadBlock("holding", 0, len(registers), tuple(points))  # above 125: no matter here
    assert check(block, registers)
    value = decoded(block, registers)["nan"]
    assert isinstance(value, float) and math.isnan(value)


def test_overlapping_points_read_the_same_registers_each_their_own_way() -> None:
    points = (
        make_point("u32", "holding", 0, "uint32"),
        make_point("hi", "holding", 0, "uint16"),
        make_point("lo", "holding", 1, "int16", scale=0.5),
        make_point("f", "holding", 0, "float32", order="CDAB"),
        make_point("b15", "holding", 0, "bit", bit=15),
        make_point("s", "holding", 0, "string", length=2, order="BADC"),
        make_point("u64", "holding", 0, "uint64", order="DCBA"),
        make_point("u64b", "holding", 0, "uint64", order="DCBA"),
    )
    block = ReadBlock("holding", 0, 4, points)
    registers = [0x4142, 0x4344, 0x4546, 0x4748]
    assert check(block, registers)
    got = decoded(block, registers)
    assert got["u32"] == 0x41424344 and got["hi"] == 0x4142 and got["lo"] == 0x4344 / 2
    assert got["s"] == "BADC" and got["b15"] is False
    assert got["u64"] == got["u64b"] == 0x4847464544434241


@pytest.mark.parametrize(
    ("registers", "why"),
    [
        ([1, 2], "too short"),
        ([1, 2, -1], "out of range"),
        ([1, 65536, 3], "out of range"),
        ([1, 2, 0x41FF], "not ASCII"),
        ([1, 2, 0xC3A9], "UTF-8 for é, not ASCII"),
    ],
)
def test_what_the_codec_refuses_the_block_refuses(registers: list[int], why: str) -> None:
    block = ReadBlock(
        "holding",
        0,
        3,
        (
            make_point("a", "holding", 0, "uint16"),
            make_point("b", "holding", 1, "int16", scale=2.0),
            make_point("s", "holding", 2, "string", length=1),
        ),
    )
    assert expected(block, registers) is None, why
    with pytest.raises(ValueError):
        BlockDecoder(block).decode(registers, ())


def test_an_answer_longer_than_asked_is_left_to_the_codec() -> None:
    """The codec reads a point's registers from a longer answer; the block decoder does not
    guess, and refuses, so the driver decodes point by point as before."""
    block = ReadBlock("holding", 0, 1, (make_point("a", "holding", 0, "uint16"),))
    assert expected(block, [7, 8]) == {"a": 7}
    with pytest.raises(ValueError, match="expected 1 registers, got 2"):
        BlockDecoder(block).decode([7, 8], ())


@pytest.mark.parametrize("seed", range(4))
def test_bit_tables_index_the_answer(seed: int) -> None:
    rng = random.Random(200 + seed)
    for _ in range(100):
        table: Table = rng.choice(["coil", "discrete"])
        base = rng.randrange(1000)
        addresses = {base + rng.randrange(300) for _ in range(rng.randint(1, 30))}
        points = [make_point(f"b{a}", table, a, "bool") for a in sorted(addresses)]
        for block in plan_reads(points, max_gap=rng.choice([0, 16, 2000]), max_registers=125):
            bits = [rng.random() < 0.5 for _ in range(block.count + rng.randrange(8))]
            decoder = BlockDecoder(block)
            got = dict(zip((p.name for p in decoder.points), decoder.decode((), bits), strict=True))
            for p in block.points:
                start = p.address - block.address
                assert got[p.name] is decode_bits(p, bits[start : start + 1])
            if block.count > 1:
                with pytest.raises(ValueError):
                    decoder.decode((), bits[: block.count - 1])  # the last point has no bit
