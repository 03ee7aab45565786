"""``edge-agent probe``: read a device once, on site, and show what it answers.

For a technician checking a register map against a device: each value next to the raw
registers it was decoded from. This module holds only the options, so that
``edge-agent --help`` does not load the Modbus config models; ``cli/modbus_probe.py``
does the work.

Exit codes: 0 when the device answered (points it refused are listed ``bad`` with the
reason), 1 when it could not be reached, 2 for a wrong command line or config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.apps import group
from cli.output import JsonOpt

probe_app = group(
    "Read a device once and show raw and decoded values (for checking register maps)."
)


@probe_app.command("modbus")
def modbus(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="agent config (with --device)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="id of a device in --config")] = None,
    host: Annotated[str | None, typer.Option(help="Modbus TCP host")] = None,
    port: Annotated[int, typer.Option(help="TCP port of --host")] = 502,
    framer: Annotated[str, typer.Option(help="tcp, or rtu for RTU over TCP")] = "tcp",
    serial: Annotated[str | None, typer.Option(help="serial port, Modbus RTU")] = None,
    baudrate: Annotated[int, typer.Option(help="with --serial")] = 19200,
    parity: Annotated[str, typer.Option(help="N, E or O, with --serial")] = "E",
    stopbits: Annotated[int, typer.Option(help="1 or 2, with --serial")] = 1,
    unit: Annotated[int, typer.Option(help="unit (slave) id")] = 1,
    table: Annotated[str, typer.Option(help="holding, input, coil or discrete")] = "holding",
    address: Annotated[int, typer.Option(help="first address, 0-based as on the wire")] = 0,
    count: Annotated[int, typer.Option(help="registers (or bits) to read")] = 1,
    type_: Annotated[
        str | None, typer.Option("--type", help="decode as: int16, float32, string …")
    ] = None,
    order: Annotated[str, typer.Option(help="ABCD, BADC, CDAB or DCBA")] = "ABCD",
    timeout: Annotated[float, typer.Option(help="seconds per try")] = 1.0,
    retries: Annotated[int, typer.Option(help="resends after a timeout")] = 0,
    json_out: JsonOpt = False,
) -> None:
    """Read a register range (--host/--serial …) or a configured device (-c … --device) once.

    Prints each value with its raw registers in hex and decimal; exit 1 if unreachable.
    """
    # the Modbus config models and driver load only when probing
    from cli.modbus_probe import probe  # noqa: PLC0415

    probe(
        config=config,
        device=device,
        host=host,
        port=port,
        framer=framer,
        serial=serial,
        baudrate=baudrate,
        parity=parity,
        stopbits=stopbits,
        unit=unit,
        table=table,
        address=address,
        count=count,
        type_=type_,
        order=order,
        timeout=timeout,
        retries=retries,
        json_out=json_out,
    )
