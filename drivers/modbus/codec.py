"""Registers to values and back, for one configured point.

Pure ``struct`` over the type table in ``types``: no Modbus library is involved, so the
codec is tested on its own and the simulator encodes test values with the very functions
the driver decodes with.

Scaling is ``value = raw * scale + offset``. An integer stays an ``int`` when the point is
unscaled, so a counter of 2**63-1 does not turn into an imprecise float. NaN and infinities
are returned as such; the wire contract turns them into null.

Every error is a ``ValueError`` naming the point: the driver turns one into a ``bad``
reading (decode) or a ``WriteRefused`` (encode).

The driver's polls decode whole blocks with ``blockcodec``, compiled from the same type
table; ``decode`` here is the reference it must agree with, bit for bit
(``tests/test_modbus_blockcodec.py``), and what the probe and any refused point go through.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from drivers.base import Value

from .config import ModbusPoint
from .types import ORDERS, Order


def _to_bytes(order: Order, registers: Sequence[int]) -> bytes:
    """The value's bytes, big-endian, from registers as they came off the wire."""
    swap_bytes, reverse_words = ORDERS[order]
    words = reversed(registers) if reverse_words else registers
    data = b"".join(word.to_bytes(2, "big") for word in words)
    return _swap_pairs(data) if swap_bytes else data


def _to_registers(order: Order, data: bytes) -> list[int]:
    """Inverse of ``_to_bytes``: both swaps are their own inverse and commute."""
    swap_bytes, reverse_words = ORDERS[order]
    if swap_bytes:
        data = _swap_pairs(data)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words[::-1] if reverse_words else words


def _swap_pairs(data: bytes) -> bytes:
    swapped = bytearray(data)
    swapped[0::2], swapped[1::2] = data[1::2], data[0::2]
    return bytes(swapped)


def decode(point: ModbusPoint, registers: Sequence[int]) -> Value:
    """The value of ``point`` from exactly its registers."""
    if len(registers) != point.count:
        raise ValueError(f"{point.name}: expected {point.count} registers, got {len(registers)}")
    if any(not 0 <= word <= 0xFFFF for word in registers):
        raise ValueError(f"{point.name}: register out of range 0..65535")
    kind = point.datatype.kind
    if kind == "bit":
        return bool((registers[0] >> (point.bit or 0)) & 1)
    data = _to_bytes(point.order, registers)
    if kind == "string":
        try:
            return data.rstrip(b"\x00 ").decode("ascii")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{point.name}: not ASCII: {data!r}") from exc
    if kind == "bool":
        raise ValueError(f"{point.name}: a bool lives in a bit table; use decode_bits")
    raw: int | float = struct.unpack(">" + point.datatype.struct, data)[0]
    if point.scale == 1 and point.offset == 0:
        return raw
    return raw * point.scale + point.offset


def decode_bits(point: ModbusPoint, bits: Sequence[bool]) -> bool:
    """The value of a coil or discrete input from exactly its bit."""
    if len(bits) != 1:
        raise ValueError(f"{point.name}: expected 1 bit, got {len(bits)}")
    return bool(bits[0])


def encode(point: ModbusPoint, value: Value, current: Sequence[int] = ()) -> list[int]:
    """The registers that make ``point`` read back as ``value`` (``[0]``/``[1]`` for a bool).

    A ``bit`` point shares its register with other data, so the register's ``current``
    content is needed to change just that bit.
    """
    kind = point.datatype.kind
    if kind in ("bool", "bit"):
        if not isinstance(value, bool | int) or value not in (0, 1):
            raise ValueError(f"{point.name}: {value!r} is not a bool")
        if kind == "bool":
            return [int(value)]
        if len(current) != 1:
            raise ValueError(f"{point.name}: changing one bit needs the register's current value")
        mask = 1 << (point.bit or 0)
        return [current[0] | mask if value else current[0] & ~mask & 0xFFFF]
    if kind == "string":
        return _to_registers(point.order, _string_bytes(point, value))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{point.name}: {value!r} is not a number")
    raw: int | float = value
    if point.scale != 1 or point.offset != 0:
        raw = (value - point.offset) / point.scale
    if kind == "int":
        if not math.isfinite(raw):
            raise ValueError(f"{point.name}: {value!r} has no integer register value")
        raw = round(raw)
    try:
        data = struct.pack(">" + point.datatype.struct, raw)
    except (struct.error, OverflowError) as exc:
        raise ValueError(f"{point.name}: {value!r} does not fit {point.type}") from exc
    return _to_registers(point.order, data)


def _string_bytes(point: ModbusPoint, value: Value) -> bytes:
    """``value`` as ASCII, padded with NULs to the point's length."""
    size = 2 * point.count
    if not isinstance(value, str) or not value.isascii():
        raise ValueError(f"{point.name}: {value!r} is not an ASCII string")
    if len(value) > size:
        raise ValueError(f"{point.name}: {value!r} is longer than {size} characters")
    return value.encode("ascii").ljust(size, b"\x00")
