"""The benchmark device: N points, half ``uint16`` holding registers, half ``float32``
input registers, read in blocks of at most 125 registers (13 requests for 1,000 points).

The same layout serves the bare pipeline (which plans its blocks here) and the agent
(which gets the points in its YAML config and plans with its own driver).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from drivers.modbus.config import ModbusPoint

MAX_REGISTERS = 125
DEVICE_ID = "bench-dev"


@dataclass(frozen=True, slots=True)
class Block:
    """One read request of the bare pipeline: ``count`` registers of ``table`` from
    ``address``; ``floats`` says the block holds float32 pairs instead of uint16 words."""

    table: str
    address: int
    count: int
    floats: bool
    names: tuple[str, ...]
    unit: str


def split_counts(n_points: int) -> tuple[int, int]:
    """How many uint16 and float32 points a device of ``n_points`` has."""
    n_u16 = n_points // 2
    return n_u16, n_points - n_u16


def point_dicts(n_points: int) -> list[dict[str, object]]:
    """The points as config mappings (what goes into the agent's YAML)."""
    n_u16, n_f32 = split_counts(n_points)
    points: list[dict[str, object]] = [
        {"name": f"u{i:05d}", "table": "holding", "address": i, "type": "uint16", "unit": "V"}
        for i in range(n_u16)
    ]
    points += [
        {"name": f"f{i:05d}", "table": "input", "address": 2 * i, "type": "float32", "unit": "kPa"}
        for i in range(n_f32)
    ]
    return points


def modbus_points(n_points: int) -> list[ModbusPoint]:
    return [ModbusPoint.model_validate(p) for p in point_dicts(n_points)]


def blocks(n_points: int) -> list[Block]:
    """Greedy blocks of at most 125 registers that never split a float32 in two."""
    n_u16, n_f32 = split_counts(n_points)
    out: list[Block] = []
    for start in range(0, n_u16, MAX_REGISTERS):
        count = min(MAX_REGISTERS, n_u16 - start)
        names = tuple(f"u{i:05d}" for i in range(start, start + count))
        out.append(Block("holding", start, count, False, names, "V"))
    per = MAX_REGISTERS // 2
    for first in range(0, n_f32, per):
        count = min(per, n_f32 - first)
        names = tuple(f"f{i:05d}" for i in range(first, first + count))
        out.append(Block("input", 2 * first, 2 * count, True, names, "kPa"))
    return out


def initial_values(n_points: int, seed: int = 1) -> dict[str, float | int]:
    """Plausible non-zero values, so that payloads have realistic sizes."""
    rng = random.Random(seed)
    n_u16, n_f32 = split_counts(n_points)
    values: dict[str, float | int] = {f"u{i:05d}": rng.randrange(65536) for i in range(n_u16)}
    values.update({f"f{i:05d}": rng.uniform(-1000.0, 1000.0) for i in range(n_f32)})
    return values


def device_yaml(
    n_points: int,
    port: int,
    poll_s: float,
    device_id: str = DEVICE_ID,
    timeout_s: float = 1.0,
) -> str:
    """One device of the agent's config, points inline (one JSON mapping per line)."""
    lines = "\n".join(f"      - {json.dumps(p)}" for p in point_dicts(n_points))
    return (
        f"  - id: {device_id}\n"
        f"    modbus: {{host: 127.0.0.1, port: {port}, unit: 1, timeout_s: {timeout_s}}}\n"
        f"    poll_s: {poll_s}\n"
        f"    points:\n{lines}\n"
    )
