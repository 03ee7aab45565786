"""Read coalescing: as few requests as possible for a device's points.

A request costs far more than the registers it carries (see README.md), so points of one
table are merged into blocks. A block may read up to ``max_gap`` registers that no point
uses, never more than the per-request limit, and never splits a multi-register point.

Sorting by address and extending the current block while both rules hold gives the fewest
requests when points do not partly overlap (points sharing one register, like the bits of
a status word, are fine): the block of an optimal plan that reads the lowest point can be
cut to start at that point, and the greedy block then reaches at least as far; repeat.

Both functions are pure, so the plan is unit-tested without a device.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .config import ModbusPoint
from .types import MAX_BITS_PER_READ, REGISTER_TABLES, TABLE_ORDER, Table


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers (or bits) of ``table`` from ``address``."""

    table: Table
    address: int
    count: int
    points: tuple[ModbusPoint, ...]


def plan_reads(
    points: Iterable[ModbusPoint], *, max_gap: int, max_registers: int
) -> list[ReadBlock]:
    """The fewest blocks that read every point, grouped by table, in address order.

    ``max_registers`` bounds register tables; coils and discrete inputs travel as bits and
    are bounded by the protocol's 2000 instead.
    """
    by_table: dict[Table, list[ModbusPoint]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    blocks: list[ReadBlock] = []
    for table in TABLE_ORDER:
        limit = max_registers if table in REGISTER_TABLES else MAX_BITS_PER_READ
        blocks += _coalesce(table, by_table.get(table, []), max_gap, limit)
    return blocks


def split(block: ReadBlock) -> list[ReadBlock]:
    """Smaller blocks for the same points, after the device refused ``block`` (exception 2).

    First the runs without holes (a device that refuses reads over registers it does not
    have still reads what it has); a run that is itself refused splits into one block per
    point. Returns ``[]`` when the block cannot get smaller: its points then go ``bad``.
    """
    runs = _coalesce(block.table, block.points, max_gap=0, limit=block.count)
    if len(runs) > 1:
        return runs
    footprints: dict[tuple[int, int], list[ModbusPoint]] = {}
    for point in block.points:
        footprints.setdefault((point.address, point.count), []).append(point)
    if len(footprints) == 1:
        return []
    return [
        ReadBlock(block.table, address, count, tuple(group))
        for (address, count), group in footprints.items()
    ]


def _coalesce(
    table: Table, points: Sequence[ModbusPoint], max_gap: int, limit: int
) -> list[ReadBlock]:
    blocks: list[ReadBlock] = []
    members: list[ModbusPoint] = []
    start = end = 0
    for point in sorted(points, key=lambda p: (p.address, p.count)):
        point_end = point.address + point.count
        if members and point.address - end <= max_gap and max(end, point_end) - start <= limit:
            members.append(point)
            end = max(end, point_end)
            continue
        if members:
            blocks.append(ReadBlock(table, start, end - start, tuple(members)))
        members, start, end = [point], point.address, point_end
    if members:
        blocks.append(ReadBlock(table, start, end - start, tuple(members)))
    return blocks
