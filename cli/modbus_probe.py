"""What ``edge-agent probe modbus`` does: read a device once, on site, and show what it
answers. ``cli/probe.py`` holds the command's options; this module, and the Modbus config
models (pydantic) with it, loads only when a probe runs.

For a technician checking a register map against a device: each value next to the raw
registers it was decoded from. Thin, like every command: it builds a ``ModbusDevice``
(from flags, or from the agent's config), reads it once through the agent's own driver,
and renders. Flags are checked by the config models, so a wrong ``--type`` or ``--order``
reads exactly as it would in a config file.

Exit codes: 0 when the device answered (points it refused are listed ``bad`` with the
reason), 1 when it could not be reached, 2 for a wrong command line or config.
"""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from pydantic import ValidationError

from cli.output import Column, print_json, print_rich, shown, table
from cli.problems import load_config_or_exit
from drivers.base import DeviceUnavailable
from drivers.modbus.config import ModbusDevice
from drivers.modbus.types import BIT_TABLES, TYPES

if TYPE_CHECKING:
    from drivers.modbus.driver import ProbedPoint

EXIT_UNREACHABLE = 1
EXIT_USAGE = 2

_FLAGS = {"timeout_s": "--timeout", "length": "--count", "points": "--count"}
"""Config fields whose flag has another name; every other flag is ``--field``."""


def probe(
    *,
    config: Path | None,
    device: str | None,
    host: str | None,
    port: int,
    framer: str,
    serial: str | None,
    baudrate: int,
    parity: str,
    stopbits: int,
    unit: int,
    table: str,
    address: int,
    count: int,
    type_: str | None,
    order: str,
    timeout: float,
    retries: int,
    json_out: bool,
) -> None:
    """Read a register range or a configured device once, and print what it answered."""
    if config is not None or device is not None:
        if host is not None or serial is not None:
            _usage("give a configured device (-c, --device) or a bus (--host/--serial), not both")
        if config is None or device is None:
            _usage("-c/--config and --device go together")
        target = _configured(config, device)
    else:
        if host is None and serial is None:
            _usage("give --host (Modbus TCP) or --serial (Modbus RTU), or -c with --device")
        if host is not None and serial is not None:
            _usage("a device is on one bus: give --host or --serial, not both")
        line: dict[str, object] = (
            {"serial": serial, "baudrate": baudrate, "parity": parity, "stopbits": stopbits}
            if serial is not None
            else {"host": host, "port": port, "framer": framer}
        )
        conn = {**line, "unit": unit, "timeout_s": timeout, "retries": retries}
        target = _range_device(conn, table, address, count, type_, order)
    # The driver logs a unit going away for the agent's log; here the one-line error is it.
    logging.getLogger("drivers.modbus").setLevel(logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        probed = asyncio.run(_read_once(target))
    except DeviceUnavailable as exc:
        where = f"unit {target.modbus.unit} on {target.modbus.bus}"
        typer.echo(f"error: cannot read {where}: {exc.reason}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE) from None
    if json_out:
        print_json(_as_json(target, probed))
    else:
        _render(target, probed)


async def _read_once(device: ModbusDevice) -> list[ProbedPoint]:
    # pymodbus loads only when probing
    from drivers.modbus.driver import ModbusDriver  # noqa: PLC0415

    driver = ModbusDriver(device)
    try:
        return await driver.read_raw()
    finally:
        await driver.aclose()


def _configured(path: Path, device_id: str) -> ModbusDevice:
    cfg = load_config_or_exit(path).config
    found = next((d for d in cfg.devices if d.id == device_id), None)
    if found is None:
        known = ", ".join(d.id for d in cfg.devices) or "none"
        _usage(f"no device {device_id!r} in {path} (devices: {known})")
    if not isinstance(found, ModbusDevice):
        _usage(f"device {device_id!r} is not a Modbus device")
    return found


def _range_device(
    conn: dict[str, object],
    table: str,
    address: int,
    count: int,
    type_name: str | None,
    order: str,
) -> ModbusDevice:
    """A device whose points cover ``count`` registers (or bits) from ``address``."""
    if type_name == "bit":
        _usage("--type bit: read the register as uint16; the hex column shows its bits")
    points: list[dict[str, object]]
    if table in BIT_TABLES:
        points = [{"type": "bool", "address": address + i} for i in range(count)]
    elif type_name == "string":
        points = [{"type": "string", "address": address, "length": count, "order": order}]
    else:
        name = type_name or "uint16"
        sizes: dict[str, int] = {each: row.registers for each, row in TYPES.items()}
        size = sizes.get(name, 1)  # an unknown type: the model says so below
        if size and count % size:
            _usage(f"--count {count} is not a whole number of {name} values ({size} each)")
        points = [
            {"type": name, "address": address + i, "order": order}
            for i in range(0, count, max(size, 1))
        ]
    for p in points:
        p.update(name=f"r{p['address']}", table=table)
    try:
        return ModbusDevice.model_validate(
            {"id": "probe", "modbus": conn, "points": points, "max_gap": 0}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        _usage(f"{_flag(first['loc'])}: {first['msg'].removeprefix('Value error, ')}")


def _flag(loc: tuple[int | str, ...]) -> str:
    field = next((str(part) for part in reversed(loc) if isinstance(part, str)), "?")
    return _FLAGS.get(field, f"--{field}")


def _usage(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _raw(probe: ProbedPoint) -> list[int]:
    return [int(word) for word in probe.raw]


def _json_value(value: object) -> object:
    """JSON has no NaN or infinity: such a value prints as null (its quality stays good)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _as_json(device: ModbusDevice, probed: list[ProbedPoint]) -> dict[str, object]:
    return {
        "device": device.id,
        "bus": device.modbus.bus,
        "unit": device.modbus.unit,
        "points": [
            {
                "name": p.point.name,
                "table": p.point.table,
                "address": p.point.address,
                "type": p.point.type,
                "registers": _raw(p),
                "value": _json_value(p.reading.value),
                "unit": p.reading.unit,
                "quality": p.reading.quality.value,
                "reason": p.reading.reason,
            }
            for p in probed
        ],
    }


def _render(device: ModbusDevice, probed: list[ProbedPoint]) -> None:
    numbers = ("address", "decimal")
    columns = [
        Column(name, justify="right" if name in numbers else "left", fold=True)
        for name in ("point", "table", "address", "hex", "decimal", "value", "unit", "quality")
    ]
    rows: list[tuple[str, ...]] = []
    for p in probed:
        bits = p.point.table in BIT_TABLES
        raw = _raw(p)
        hex_words = " ".join(str(word) if bits else f"{word:04X}" for word in raw)
        quality = p.reading.quality.value
        if p.reading.reason:
            quality = f"{quality}: {p.reading.reason}"
        rows.append(
            (
                p.point.name,
                p.point.table,
                str(p.point.address),
                hex_words,
                " ".join(str(word) for word in raw),
                _value(p.reading.value),
                p.reading.unit or "",
                quality,
            )
        )
    title = f"{device.id}: unit {device.modbus.unit} on {device.modbus.bus}"
    print_rich(table(columns, rows, title=title))


def _value(value: object) -> str:
    """Text quoted (a device's string may be blank or end in spaces), numbers to the
    precision they have (a float32 register to 7 digits)."""
    return repr(value) if isinstance(value, str) else shown(value)
