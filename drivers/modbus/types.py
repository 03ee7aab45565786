"""The one table of Modbus data types: the config validator and the codec both read it.

Keeping "which tables a type may live in", "how many registers it takes", "which byte
orders make sense" and "how to unpack it" in a single row per type means validation and
decoding cannot disagree (Home Assistant's ``DEFAULT_STRUCT_FORMAT`` works the same way).

Byte and word order, named by where the bytes of the big-endian value ``A B C D`` land on
the wire (register by register, high byte first within a register)::

    ABCD  big-endian bytes, big-endian words      Modbus' own order; the default
    BADC  bytes swapped within each register
    CDAB  word order reversed (low word first)    common on PLCs and meters
    DCBA  fully little-endian

For 64-bit values the same two switches apply to four registers: ``CDAB`` reverses all four
words (``GHEFCDAB`` in Telegraf's notation), ``BADC`` swaps bytes inside each one.

A one-register type has no word order, so ``CDAB`` and ``DCBA`` are refused on 16-bit
types rather than silently meaning ``ABCD`` and ``BADC``: a profile that says ``CDAB`` for
an ``int16`` was most likely written for a different register map, and that should be
loud. Strings take ``ABCD`` or ``BADC`` (some devices store two characters per register
low byte first); single bits take no order at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

Table = Literal["holding", "input", "coil", "discrete"]
TypeName = Literal[
    "bit",
    "bool",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "string",
]
Order = Literal["ABCD", "BADC", "CDAB", "DCBA"]
Kind = Literal["bool", "bit", "int", "float", "string"]

REGISTER_TABLES: Final = frozenset[Table]({"holding", "input"})
BIT_TABLES: Final = frozenset[Table]({"coil", "discrete"})
WRITABLE_TABLES: Final = frozenset[Table]({"holding", "coil"})
TABLE_ORDER: Final[tuple[Table, ...]] = ("holding", "input", "coil", "discrete")

MAX_REGISTERS_PER_READ: Final = 125
"""Function codes 3 and 4 carry at most 125 registers (250 data bytes in a 253-byte PDU)."""
MAX_BITS_PER_READ: Final = 2000
"""Function codes 1 and 2 carry at most 2000 bits."""

ORDERS: Final[Mapping[Order, tuple[bool, bool]]] = {
    # order: (swap bytes within each register, reverse the order of registers)
    "ABCD": (False, False),
    "BADC": (True, False),
    "CDAB": (False, True),
    "DCBA": (True, True),
}

_ANY_ORDER: Final = frozenset[Order](ORDERS)
_BYTE_ORDERS: Final = frozenset[Order]({"ABCD", "BADC"})
_NO_ORDER: Final = frozenset[Order]({"ABCD"})


@dataclass(frozen=True, slots=True)
class ModbusType:
    """One row of the table: everything that depends on a point's ``type``."""

    kind: Kind
    registers: int
    """Registers one value occupies (bits for ``bool``); 0 means the point's ``length``."""
    struct: str
    """``struct`` code of a numeric value, packed big-endian; empty for non-numeric kinds."""
    tables: frozenset[Table]
    orders: frozenset[Order]

    @property
    def numeric(self) -> bool:
        """Scale and offset apply only to numbers."""
        return self.kind in ("int", "float")


TYPES: Final[Mapping[TypeName, ModbusType]] = {
    "bool": ModbusType("bool", 1, "", BIT_TABLES, _NO_ORDER),
    "bit": ModbusType("bit", 1, "", REGISTER_TABLES, _NO_ORDER),
    "int16": ModbusType("int", 1, "h", REGISTER_TABLES, _BYTE_ORDERS),
    "uint16": ModbusType("int", 1, "H", REGISTER_TABLES, _BYTE_ORDERS),
    "int32": ModbusType("int", 2, "i", REGISTER_TABLES, _ANY_ORDER),
    "uint32": ModbusType("int", 2, "I", REGISTER_TABLES, _ANY_ORDER),
    "int64": ModbusType("int", 4, "q", REGISTER_TABLES, _ANY_ORDER),
    "uint64": ModbusType("int", 4, "Q", REGISTER_TABLES, _ANY_ORDER),
    "float32": ModbusType("float", 2, "f", REGISTER_TABLES, _ANY_ORDER),
    "float64": ModbusType("float", 4, "d", REGISTER_TABLES, _ANY_ORDER),
    "string": ModbusType("string", 0, "", REGISTER_TABLES, _BYTE_ORDERS),
}
