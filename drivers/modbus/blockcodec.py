"""A whole read block to values at once: the codec's results, compiled per block.

``codec.decode`` takes one point and its registers, checks them, joins their bytes in the
point's order and unpacks them with a format built on the spot: right for a probe, costly
at every point of every poll. A ``BlockDecoder`` does that work once, when the plan is
made, and then decodes a block's answer with one ``struct`` call per byte layout.

How a byte order becomes a ``struct`` layout, from the ``ORDERS`` switches in ``types``:
reversing the registers *and* swapping the bytes in each reverses all bytes, so a value
whose registers come low word first reads little-endian; swapping only one of the two is
the same as reading the byte-swapped copy of the block (every register packed
little-endian). So every numeric point of the type table reads with its own ``struct``
code from one of four layouts::

    ABCD  block bytes,          big-endian        BADC  byte-swapped copy, big-endian
    DCBA  block bytes,          little-endian     CDAB  byte-swapped copy, little-endian

Points of one layout that do not overlap share one ``Struct`` (pad bytes ``x`` over the
gaps); a point overlapping another of its layout (two types over the same registers)
gets a ``Struct`` of its own at its offset. Bits of a register are shifted out of the
register itself, strings are slices of the block bytes (or of the swapped copy for
``BADC``); anything else goes through ``codec.decode`` itself.

The values are the codec's, bit for bit: the same ``struct`` codes from the same type
table, ``raw * scale + offset`` only where the point is scaled (an unscaled integer stays
an ``int``), NaN and infinities passed on. Where the codec would refuse a point (an
answer of the wrong length, a register outside 0..65535, a string that is not ASCII),
``decode`` raises ``ValueError`` for the block as a whole, and the caller asks the codec
point by point, which names the point and the reason. ``tests/test_modbus_blockcodec.py``
checks the equivalence on random maps and registers.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from itertools import groupby
from typing import Any

from drivers.base import Value

from .codec import decode as decode_point
from .config import ModbusPoint
from .plan import ReadBlock
from .types import BIT_TABLES, ORDERS, Order

Layout = tuple[bool, bool]
"""Where a value's bytes are read from: (the byte-swapped copy of the block, little-endian)."""

_LAYOUTS: tuple[Layout, ...] = ((False, False), (True, False), (True, True), (False, True))


def layout(order: Order) -> Layout:
    """The block copy and endianness from which ``struct`` reads a value in ``order``."""
    swap_bytes, reverse_words = ORDERS[order]
    return swap_bytes != reverse_words, reverse_words


def _format(little: bool, fields: Sequence[tuple[int, str]]) -> str:
    """A ``struct`` format reading ``(byte offset, code)`` fields, gaps padded with ``x``."""
    codes: list[str] = []
    at = 0
    for offset, code in fields:
        codes += ["x"] * (offset - at)
        codes.append(code)
        at = offset + struct.calcsize(">" + code)
    body = "".join(f"{len(run)}{code}" for code, run in ((c, list(g)) for c, g in groupby(codes)))
    return ("<" if little else ">") + body


class BlockDecoder:
    """The values of every point of one block from the block's answer, in one pass.

    ``points`` are the block's points in the order ``decode`` returns their values (not
    the block's order: grouped by how each is decoded).
    """

    __slots__ = (
        "_bit_offsets",
        "_count",
        "_extras",
        "_generic",
        "_groups",
        "_in_bits",
        "_min_bits",
        "_register_bits",
        "_scaled",
        "_strings",
        "_swap",
        "_words",
        "_words_swapped",
        "block",
        "points",
    )

    def __init__(self, block: ReadBlock) -> None:
        self.block = block
        self._count = block.count
        self._words = struct.Struct(f">{block.count}H")
        self._words_swapped = struct.Struct(f"<{block.count}H")
        self._in_bits = block.table in BIT_TABLES
        self._bit_offsets: tuple[int, ...] = ()
        self._min_bits = 0
        self._groups: tuple[tuple[struct.Struct, bool], ...] = ()
        self._extras: tuple[tuple[struct.Struct, bool, int], ...] = ()
        self._register_bits: tuple[tuple[int, int], ...] = ()
        self._strings: tuple[tuple[bool, int, int], ...] = ()
        self._generic: tuple[tuple[ModbusPoint, int, int], ...] = ()
        self._scaled: tuple[tuple[int, float, float], ...] = ()
        self._swap = False
        points = sorted(block.points, key=lambda p: (p.address, p.count))
        self.points: tuple[ModbusPoint, ...] = tuple(points)
        if self._in_bits:
            self._bit_offsets = tuple(p.address - block.address for p in points)
            self._min_bits = max(self._bit_offsets, default=-1) + 1
        else:
            self._compile_registers(points)

    def _compile_registers(self, points: list[ModbusPoint]) -> None:
        fields: dict[Layout, list[tuple[int, str, ModbusPoint]]] = {key: [] for key in _LAYOUTS}
        ends: dict[Layout, int] = dict.fromkeys(_LAYOUTS, 0)
        extras: list[tuple[Layout, int, str, ModbusPoint]] = []
        bits: list[tuple[int, int, ModbusPoint]] = []
        strings: list[tuple[bool, int, int, ModbusPoint]] = []
        generic: list[tuple[ModbusPoint, int, int]] = []
        for point in points:
            start = point.address - self.block.address
            kind, code = point.datatype.kind, point.datatype.struct
            swap_bytes, reverse_words = ORDERS[point.order]
            if kind in ("int", "float") and code and struct.calcsize(">" + code) == 2 * point.count:
                key = layout(point.order)
                if 2 * start >= ends[key]:
                    fields[key].append((2 * start, code, point))
                    ends[key] = 2 * (start + point.count)
                else:  # overlaps a point of the same layout: read on its own
                    extras.append((key, 2 * start, code, point))
            elif kind == "bit":
                bits.append((start, point.bit or 0, point))
            elif kind == "string" and not reverse_words:
                strings.append((swap_bytes, 2 * start, 2 * (start + point.count), point))
            else:  # not in a config the model accepts; the codec says what it makes of it
                generic.append((point, start, start + point.count))
        ordered: list[ModbusPoint] = []
        groups: list[tuple[struct.Struct, bool]] = []
        for key in _LAYOUTS:
            if fields[key]:
                swapped, little = key
                fmt = _format(little, [(offset, code) for offset, code, _ in fields[key]])
                groups.append((struct.Struct(fmt), swapped))
                ordered += [p for _, _, p in fields[key]]
        self._groups = tuple(groups)
        self._extras = tuple(
            (struct.Struct(("<" if little else ">") + code), swapped, offset)
            for (swapped, little), offset, code, _ in extras
        )
        self._register_bits = tuple((word, bit) for word, bit, _ in bits)
        self._strings = tuple((swapped, lo, hi) for swapped, lo, hi, _ in strings)
        self._generic = tuple(generic)
        ordered += [p for *_, p in extras]
        ordered += [p for *_, p in bits]
        ordered += [p for *_, p in strings]
        ordered += [p for p, _, _ in generic]
        self.points = tuple(ordered)
        self._scaled = tuple(
            (j, p.scale, p.offset)
            for j, p in enumerate(ordered)
            if p.datatype.numeric and not (p.scale == 1 and p.offset == 0)
        )
        self._swap = (
            any(swapped for _, swapped in self._groups)
            or any(swapped for _, swapped, _ in self._extras)
            or any(swapped for swapped, _, _ in self._strings)
        )

    def decode(self, registers: Sequence[int], bits: Sequence[bool]) -> list[Value]:
        """Values of ``points`` from the block's answer: its registers, or its bits.

        Raises ValueError wherever ``codec.decode`` or ``codec.decode_bits`` would refuse
        any one of the points; the caller then decodes point by point to learn which.
        """
        if self._in_bits:
            if len(bits) < self._min_bits:
                raise ValueError(f"expected {self._count} bits, got {len(bits)}")
            return [bool(bits[i]) for i in self._bit_offsets]
        if len(registers) != self._count:
            raise ValueError(f"expected {self._count} registers, got {len(registers)}")
        try:
            data = self._words.pack(*registers)
            swapped = self._words_swapped.pack(*registers) if self._swap else data
        except struct.error:
            raise ValueError("register out of range 0..65535") from None
        values: list[Any] = []
        for unpacker, from_swapped in self._groups:
            values += unpacker.unpack_from(swapped if from_swapped else data)
        for unpacker, from_swapped, at in self._extras:
            values.append(unpacker.unpack_from(swapped if from_swapped else data, at)[0])
        for word, bit in self._register_bits:
            values.append(bool((registers[word] >> bit) & 1))
        for from_swapped, lo, hi in self._strings:
            text = (swapped if from_swapped else data)[lo:hi]
            values.append(text.rstrip(b"\x00 ").decode("ascii"))  # UnicodeDecodeError: ValueError
        for point, lo, hi in self._generic:
            values.append(decode_point(point, registers[lo:hi]))
        for j, scale, offset in self._scaled:
            values[j] = values[j] * scale + offset
        return values
