"""Read coalescing: the fewest requests, within the gap and size limits, nothing split."""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import pytest

from drivers.modbus import ModbusPoint
from drivers.modbus.plan import ReadBlock, plan_reads, split
from drivers.modbus.types import REGISTER_TABLES


def pt(name: str, table: str, address: int, type_name: str = "uint16", **extra: Any) -> ModbusPoint:
    return ModbusPoint.model_validate(
        {"name": name, "table": table, "address": address, "type": type_name, **extra}
    )


def sparse_map() -> list[ModbusPoint]:
    """36 points with holes of 0, 2, 3, 4, 6, 17, 18, 39, 54, 79 and 166 registers."""
    points = [pt(f"h{i}", "holding", i) for i in range(10)]  # 0..9
    points += [
        pt("flow", "holding", 12, "float32"),  # hole 2
        pt("energy", "holding", 20, "int32"),  # hole 6
        pt("a40", "holding", 40),  # hole 18
        pt("a41", "holding", 41),
        pt("status", "holding", 45),  # hole 3
        pt("alarm", "holding", 45, "bit", bit=0),
        pt("pre_alarm", "holding", 45, "bit", bit=1),
        pt("fault", "holding", 45, "bit", bit=2),
        pt("serial", "holding", 100, "string", length=8),  # hole 54
        pt("counter", "holding", 108, "uint64"),  # hole 0
        pt("total", "holding", 130, "float64"),  # hole 18
        pt("a300", "holding", 300),  # hole 166
        pt("a305", "holding", 305),  # hole 4
        pt("pressure", "input", 0, "float32"),
        pt("temperature", "input", 2, "int16"),
        pt("voltage", "input", 3),
        pt("hours", "input", 4, "uint32", order="CDAB"),
        pt("i10", "input", 10, "int16"),  # hole 4
        pt("i50", "input", 50, "int16"),  # hole 39
        pt("siren", "coil", 0, "bool"),
        pt("lamp", "coil", 1, "bool"),
        pt("valve", "coil", 2, "bool"),
        pt("pump", "coil", 20, "bool"),  # hole 17
        pt("fan", "coil", 100, "bool"),  # hole 79
        pt("door", "discrete", 0, "bool"),
        pt("heat", "discrete", 5, "bool"),  # hole 4
    ]
    return points


def min_requests(points: Sequence[ModbusPoint], max_gap: int, max_registers: int) -> int:
    """Exhaustive minimum by dynamic programming, for maps without partial overlaps.

    Without partial overlaps, a request covers a run of consecutive footprints (anything
    between two footprints it reads is read anyway), so the best split of the sorted
    footprints into runs is the minimum.
    """
    total = 0
    for table in ("holding", "input", "coil", "discrete"):
        spans = sorted({(p.address, p.address + p.count) for p in points if p.table == table})
        limit = max_registers if table in REGISTER_TABLES else 2000
        best = [0] + [len(spans) + 1] * len(spans)
        for end in range(1, len(spans) + 1):
            for start in range(end):
                run = spans[start:end]
                holes = [b[0] - a[1] for a, b in pairwise(run)]
                fits = run[-1][1] - run[0][0] <= limit and all(h <= max_gap for h in holes)
                if fits:
                    best[end] = min(best[end], best[start] + 1)
        total += best[len(spans)]
    return total


def check(blocks: list[ReadBlock], points: Sequence[ModbusPoint], max_gap: int, limit: int) -> None:
    """Every point read exactly once, whole, within its block's limits."""
    placed = [p.name for b in blocks for p in b.points]
    assert sorted(placed) == sorted(p.name for p in points)
    for block in blocks:
        assert block.count <= (limit if block.table in REGISTER_TABLES else 2000)
        assert block.points[0].address == block.address
        assert max(p.address + p.count for p in block.points) == block.address + block.count
        covered = sorted({(p.address, p.address + p.count) for p in block.points})
        end = covered[0][1]
        for start, stop in covered[1:]:
            assert start - end <= max_gap
            end = max(end, stop)
        assert all(p.table == block.table for p in block.points)


@pytest.mark.parametrize(
    ("max_gap", "expected"),
    [(0, 17), (4, 12), (16, 11), (20, 8), (60, 7), (125, 6)],
)
def test_sparse_map_takes_the_minimum_number_of_requests(max_gap: int, expected: int) -> None:
    points = sparse_map()
    blocks = plan_reads(points, max_gap=max_gap, max_registers=125)
    check(blocks, points, max_gap, 125)
    assert len(blocks) == expected == min_requests(points, max_gap, 125)
    assert len(points) == 36  # what one request per point would cost


def test_default_gap_on_the_sparse_map() -> None:
    blocks = plan_reads(sparse_map(), max_gap=16, max_registers=125)
    holding = [(b.address, b.count) for b in blocks if b.table == "holding"]
    assert holding == [(0, 22), (40, 6), (100, 12), (130, 4), (300, 6)]
    status = next(b for b in blocks if b.address == 40)
    names = {p.name for p in status.points}
    assert names == {"a40", "a41", "status", "alarm", "pre_alarm", "fault"}


def test_request_size_limit_never_splits_a_point() -> None:
    points = [pt(f"f{i}", "holding", 2 * i, "float32") for i in range(70)]  # 140 registers
    blocks = plan_reads(points, max_gap=0, max_registers=125)
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 16)]
    small = plan_reads(points, max_gap=0, max_registers=5)
    assert len(small) == 35 and all(b.count == 4 for b in small)
    check(small, points, 0, 5)


def test_bits_are_limited_to_2000_per_request() -> None:
    points = [pt(f"c{i}", "coil", i, "bool") for i in range(0, 2500, 10)]
    blocks = plan_reads(points, max_gap=16, max_registers=125)
    assert [(b.address, b.count) for b in blocks] == [(0, 1991), (2000, 491)]


def test_a_string_of_the_maximum_length_is_one_request() -> None:
    points = [pt("s", "input", 10, "string", length=125)]
    assert [(b.address, b.count) for b in plan_reads(points, max_gap=0, max_registers=125)] == [
        (10, 125)
    ]


def test_random_maps_take_the_minimum_number_of_requests() -> None:
    rng = random.Random(20240611)
    types = ["uint16", "int32", "float64", "string", "bit"]
    for _ in range(60):
        points: list[ModbusPoint] = []
        address = rng.randrange(0, 50)
        for i in range(rng.randrange(1, 40)):
            type_name = rng.choice(types)
            extra: dict[str, Any] = {"bit": rng.randrange(16)} if type_name == "bit" else {}
            if type_name == "string":
                extra["length"] = rng.randrange(1, 12)
            point = pt(f"p{i}", rng.choice(["holding", "input"]), address, type_name, **extra)
            points.append(point)
            if rng.random() < 0.2:  # another bit of the same register
                points.append(pt(f"b{i}", point.table, address, "bit", bit=3))
            address += point.count + rng.choice([0, 0, 1, 2, 5, 9, 17, 40, 130])
        for max_gap in (0, 1, 3, 8, 16, 50, 125):
            for max_registers in (125, 12):
                blocks = plan_reads(points, max_gap=max_gap, max_registers=max_registers)
                check(blocks, points, max_gap, max_registers)
                assert len(blocks) == min_requests(points, max_gap, max_registers)


def test_split_gives_runs_without_holes_then_single_points() -> None:
    points = sparse_map()
    block = plan_reads(points, max_gap=16, max_registers=125)[0]  # holding 0..21, holes 2 and 6
    runs = split(block)
    assert [(b.address, b.count) for b in runs] == [(0, 10), (12, 2), (20, 2)]
    singles = split(runs[0])
    assert [(b.address, b.count) for b in singles] == [(i, 1) for i in range(10)]
    assert split(singles[0]) == []


def test_split_keeps_points_of_one_register_together() -> None:
    blocks = {b.address: b for b in plan_reads(sparse_map(), max_gap=0, max_registers=125)}
    assert split(blocks[45]) == []  # status word and its bits: one register, one request
    pieces = split(blocks[40])
    assert [(b.address, len(b.points)) for b in pieces] == [(40, 1), (41, 1)]


def test_plan_is_ordered_by_table_then_address() -> None:
    blocks = plan_reads(reversed(sparse_map()), max_gap=0, max_registers=125)
    keys = [(("holding", "input", "coil", "discrete").index(b.table), b.address) for b in blocks]
    assert keys == sorted(keys)
