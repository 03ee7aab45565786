"""The Modbus type table, codec and config validation, without a device.

Expected registers come from an oracle written in Telegraf's letter notation (``CDAB`` on
eight bytes is ``GHEFCDAB``), not from the codec's own swap logic, so a mistake in one
cannot hide in the other. The same oracle drives the over-the-wire tests in
``test_modbus_driver.py``.
"""

from __future__ import annotations

import math
import struct
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from drivers.base import Value
from drivers.modbus import ModbusDevice, ModbusPoint
from drivers.modbus.codec import decode, decode_bits, encode
from drivers.modbus.types import TYPES, TypeName

PATTERNS = {
    2: {"ABCD": "AB", "BADC": "BA"},
    4: {"ABCD": "ABCD", "BADC": "BADC", "CDAB": "CDAB", "DCBA": "DCBA"},
    8: {"ABCD": "ABCDEFGH", "BADC": "BADCFEHG", "CDAB": "GHEFCDAB", "DCBA": "HGFEDCBA"},
}
"""Where each byte of the big-endian value goes on the wire, per order and value size."""

NAN, INF = float("nan"), float("inf")
KNOWN: dict[str, list[int | float]] = {
    "int16": [-2, -32768, 32767, 0x1234],
    "uint16": [0, 0x1234, 65535],
    "int32": [-123456789, -(2**31), 2**31 - 1],
    "uint32": [0xDEADBEEF, 2**32 - 1],
    "int64": [-(2**63), 2**63 - 1, -2, 0x0102030405060708],
    "uint64": [2**64 - 1, 0x0102030405060708],
    "float32": [-1.5, NAN, INF, -INF, 3.4028234663852886e38],
    "float64": [-1.5e-300, NAN, INF, -INF, 0.1],
}
STRINGS: list[tuple[bytes, str]] = [
    (b"SD-2000\x00", "SD-2000"),
    (b"AB  \x00\x00\x00\x00", "AB"),
    (b"ABCDEFGH", "ABCDEFGH"),
    (b"A\x00C\x00\x00\x00\x00\x00", "A\x00C"),
]
"""Raw 4-register strings and what they read as: only trailing NULs and spaces go."""


def wire(type_name: str, value: int | float, order: str) -> list[int]:
    """Registers a device sends for ``value``, independent of the codec under test."""
    big = struct.pack(">" + TYPES[type_name].struct, value)  # type: ignore[index]
    arranged = bytes(big[ord(letter) - ord("A")] for letter in PATTERNS[len(big)][order])
    return [int.from_bytes(arranged[i : i + 2], "big") for i in range(0, len(arranged), 2)]


def string_wire(raw: bytes, order: str) -> list[int]:
    if order == "BADC":
        raw = bytes(raw[i ^ 1] for i in range(len(raw)))
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def type_cases() -> list[tuple[str, str, int | float]]:
    return [
        (type_name, order, value)
        for type_name, values in KNOWN.items()
        for order in PATTERNS[struct.calcsize(TYPES[type_name].struct)]  # type: ignore[index]
        for value in values
    ]


def same(got: Value, expected: Value) -> bool:
    """Equal, NaN equal to NaN, and an int is not a float."""
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(got, float) and math.isnan(got)
    return type(got) is type(expected) and got == expected


def point(**fields: Any) -> ModbusPoint:
    return ModbusPoint.model_validate({"name": "p", "table": "holding", "address": 0, **fields})


def test_type_table_covers_every_type_name() -> None:
    assert set(TYPES) == set(get_args(TypeName))


def test_oracle_agrees_with_hand_written_registers() -> None:
    # -1.5 is 0xBFC00000; 0x0102030405060708 spells its own byte positions
    assert wire("float32", -1.5, "ABCD") == [0xBFC0, 0x0000]
    assert wire("float32", -1.5, "BADC") == [0xC0BF, 0x0000]
    assert wire("float32", -1.5, "CDAB") == [0x0000, 0xBFC0]
    assert wire("float32", -1.5, "DCBA") == [0x0000, 0xC0BF]
    assert wire("int64", 0x0102030405060708, "CDAB") == [0x0708, 0x0506, 0x0304, 0x0102]
    assert wire("int64", 0x0102030405060708, "BADC") == [0x0201, 0x0403, 0x0605, 0x0807]
    assert wire("int16", -2, "BADC") == [0xFEFF]


@pytest.mark.parametrize(("type_name", "order", "value"), type_cases())
def test_decode_every_type_and_order(type_name: str, order: str, value: int | float) -> None:
    p = point(type=type_name, order=order)
    assert same(decode(p, wire(type_name, value, order)), value)


@pytest.mark.parametrize(("type_name", "order", "value"), type_cases())
def test_encode_is_what_the_device_would_send(
    type_name: str, order: str, value: int | float
) -> None:
    if isinstance(value, float) and math.isnan(value):
        # NaN has many encodings; it must come back as NaN
        decoded = decode(point(type=type_name, order=order), wire(type_name, value, order))
        assert isinstance(decoded, float) and math.isnan(decoded)
        return
    assert encode(point(type=type_name, order=order), value) == wire(type_name, value, order)


@pytest.mark.parametrize("order", ["ABCD", "BADC"])
@pytest.mark.parametrize(("raw", "text"), STRINGS)
def test_strings(raw: bytes, text: str, order: str) -> None:
    p = point(type="string", length=4, order=order)
    assert decode(p, string_wire(raw, order)) == text
    assert decode(p, encode(p, text)) == text


def test_string_encoding_pads_with_nuls_and_refuses_what_does_not_fit() -> None:
    p = point(type="string", length=2)
    assert encode(p, "AB") == [0x4142, 0x0000]
    with pytest.raises(ValueError, match="longer than 4"):
        encode(p, "ABCDE")
    with pytest.raises(ValueError, match="not an ASCII string"):
        encode(p, "Grüße")
    with pytest.raises(ValueError, match="not ASCII"):
        decode(p, [0x41FF, 0x0000])


def test_scale_and_offset() -> None:
    level = point(type="uint16", scale=0.001)
    assert decode(level, [103]) == pytest.approx(0.103)
    assert encode(level, 0.103) == [103]
    temperature = point(type="int16", scale=0.1, offset=2.0)
    assert decode(temperature, wire("int16", -5, "ABCD")) == pytest.approx(1.5)
    assert encode(temperature, 1.5) == wire("int16", -5, "ABCD")
    scaled = decode(point(type="uint16", scale=2.0), [21])
    assert scaled == 42.0 and isinstance(scaled, float)
    assert isinstance(decode(point(type="uint16"), [21]), int)
    assert math.isnan(decode(point(type="float32", scale=10.0), wire("float32", NAN, "ABCD")))  # type: ignore[arg-type]


def test_bit_of_register_counts_from_the_least_significant_bit() -> None:
    register = [0b1000_0000_0000_0101]
    expected = {0: True, 1: False, 2: True, 14: False, 15: True}
    for bit, value in expected.items():
        assert decode(point(type="bit", bit=bit), register) is value


def test_encoding_a_bit_changes_only_that_bit() -> None:
    bit1 = point(type="bit", bit=1)
    assert encode(bit1, True, [0b1000_0000_0000_0101]) == [0b1000_0000_0000_0111]
    assert encode(point(type="bit", bit=15), False, [0xFFFF]) == [0x7FFF]
    with pytest.raises(ValueError, match="current value"):
        encode(point(type="bit", bit=1), True)


def test_bools() -> None:
    coil = point(table="coil", type="bool")
    assert decode_bits(coil, [True]) is True
    assert encode(coil, False) == [0]
    assert encode(coil, True) == [1]
    with pytest.raises(ValueError, match="not a bool"):
        encode(coil, 2)


@pytest.mark.parametrize(
    ("fields", "value", "message"),
    [
        ({"type": "int16"}, 40000, "does not fit int16"),
        ({"type": "uint16"}, -1, "does not fit uint16"),
        ({"type": "uint64"}, 2**64, "does not fit uint64"),
        ({"type": "float32"}, 1e39, "does not fit float32"),
        ({"type": "int32"}, "12", "not a number"),
        ({"type": "int32"}, True, "not a number"),
        ({"type": "int32"}, None, "not a number"),
        ({"type": "int32"}, INF, "no integer register value"),
    ],
)
def test_encode_refuses_values_the_point_cannot_hold(
    fields: dict[str, Any], value: Value, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode(point(**fields), value)


def test_decode_refuses_the_wrong_number_of_registers() -> None:
    with pytest.raises(ValueError, match="expected 2 registers, got 1"):
        decode(point(type="float32"), [0])


# -- config validation: the same table decides what a config may say ----------------------


def device(*points: dict[str, Any], **extra: Any) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {"id": "dev-1", "modbus": {"host": "127.0.0.1"}, "points": list(points), **extra}
    )


def errors(*points: dict[str, Any], **extra: Any) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        device(*points, **extra)
    return [(tuple(e["loc"]), e["msg"]) for e in caught.value.errors()]


LEVEL = {"name": "level", "table": "holding", "address": 103, "type": "uint16"}


def test_a_valid_device_and_its_defaults() -> None:
    dev = device(LEVEL, {"name": "door", "table": "discrete", "address": 0, "type": "bool"})
    assert dev.modbus.port == 502 and dev.modbus.unit == 1 and dev.modbus.timeout_s == 1.0
    assert dev.max_gap == 16 and dev.read_gap == 16 and dev.max_registers_per_read == 125
    assert dev.points[0].order == "ABCD" and dev.points[0].count == 1
    assert device(LEVEL, no_gap_reads=True).read_gap == 0


@pytest.mark.parametrize(
    ("bad", "loc", "message"),
    [
        ({"table": "coil", "type": "float32"}, "type", "float32 cannot live in table coil"),
        ({"table": "holding", "type": "bool"}, "type", "bool cannot live in table holding"),
        ({"type": "bit"}, "bit", "type bit needs bit"),
        ({"type": "uint16", "bit": 3}, "bit", "only type bit takes bit"),
        ({"type": "bit", "bit": 16}, "bit", "less than or equal to 15"),
        ({"type": "string"}, "length", "type string needs length"),
        ({"type": "int16", "order": "CDAB"}, "order", "order CDAB does not apply to int16"),
        ({"type": "bit", "bit": 0, "order": "BADC"}, "order", "does not apply to bit"),
        ({"type": "float64", "address": 65533}, "address", "bad address"),
        ({"address": 65536}, "address", "less than or equal to 65535"),
        ({"address": -1}, "address", "greater than or equal to 0"),
        ({"type": "bit", "bit": 0, "scale": 2}, "scale", "scale and offset apply to numbers"),
        ({"scale": 0}, "scale", "scale 0"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"type": "int128"}, "type", "Input should be"),
    ],
)
def test_point_errors_name_the_field(bad: dict[str, Any], loc: str, message: str) -> None:
    found = errors(LEVEL, {**LEVEL, "name": "p", **bad})
    assert len(found) == 1, found
    assert found[0][0] == ("points", 1, loc)
    assert message in found[0][1]


def test_a_point_with_several_problems_reports_each() -> None:
    found = errors({"name": "x", "table": "coil", "address": 65535, "type": "float64"})
    assert {loc for loc, _ in found} == {("points", 0, "type"), ("points", 0, "address")}


def test_duplicate_point_names_are_named() -> None:
    found = errors(LEVEL, {**LEVEL, "name": "other"}, {**LEVEL, "address": 7})
    assert found == [(("points", 2, "name"), "duplicate point name 'level' (first at points.0)")]


def test_device_errors_name_the_field() -> None:
    assert errors(LEVEL, modbus={"host": "h", "unit": 256})[0][0] == ("modbus", "unit")
    assert errors(LEVEL, modbus={"serial": "/dev/ttyS1", "unit": 248}) == [
        (("modbus", "unit"), "RTU units are 1..247 (248..255 are reserved); 0 and 255 are for TCP")
    ]
    rtu_over_tcp = {"host": "h", "framer": "rtu", "unit": 255}
    assert errors(LEVEL, modbus=rtu_over_tcp)[0][0] == ("modbus", "unit")
    assert device(LEVEL, modbus={"host": "h", "unit": 255}).modbus.unit == 255  # TCP: "this device"
    assert errors(LEVEL, modbus={"host": "h", "baud": 9600})[0][0] == ("modbus", "baud")
    assert errors(LEVEL, max_registers_per_read=126)[0][0] == ("max_registers_per_read",)
    assert errors()[0][0] == ("points",)
    long_string = {**LEVEL, "type": "string", "length": 20}
    assert errors(long_string, max_registers_per_read=10) == [
        (("points", 0, "type"), "20 registers do not fit one read (max_registers_per_read is 10)")
    ]
