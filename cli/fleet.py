"""``fleet``: the operator's command for the central service and the fleet's data."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Annotated

import typer

from cli.common import (
    DEFAULT_BROKER,
    DEFAULT_DB,
    BrokerOpt,
    DbOpt,
    JsonOpt,
    ago,
    parse_broker,
    parse_since,
    print_json,
    require_db,
)
from edge_agent.contract import DEFAULT_ROOT, Topics

app = typer.Typer(
    name="fleet",
    help="EdgeFleet operator tool: run the central service, query gateways and readings.",
    no_args_is_help=True,
    add_completion=False,
)
central_app = typer.Typer(help="The central service.", no_args_is_help=True)
gateways_app = typer.Typer(help="Gateways of the fleet.", no_args_is_help=True)
app.add_typer(central_app, name="central")
app.add_typer(gateways_app, name="gateways")

RootOpt = Annotated[
    str,
    typer.Option("--topic-root", envvar="EDGEFLEET_TOPIC_ROOT", help="root of the fleet's topics"),
]


@central_app.command("run")
def central_run(
    broker: BrokerOpt = DEFAULT_BROKER,
    db: DbOpt = DEFAULT_DB,
    topic_root: RootOpt = DEFAULT_ROOT,
    client_id: Annotated[
        str, typer.Option(help="MQTT client id (keep it stable: the session is persistent)")
    ] = "edgefleet-central",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the central service: store what the fleet sends and acknowledge it."""
    from central.ingest import Ingest, run_central
    from central.store import Store

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    url = parse_broker(broker)
    store = Store(db)
    ingest = Ingest(store, url, Topics(topic_root), client_id=client_id)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger("central").info("central service: broker %s, store %s", url, db)
    run_central(store, ingest, stop)


@gateways_app.command("list")
def gateways_list(db: DbOpt = DEFAULT_DB, json_out: JsonOpt = False) -> None:
    """List gateways: id, site, online, agent version, last seen, outbox backlog."""
    from central.store import Store

    rows = Store(require_db(db)).gateways()
    if json_out:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("gateway", "site", "online", "agent", "config", "last seen", "backlog")
    for r in rows:
        table.add_row(
            r["id"],
            r["site"] or "",
            "[green]yes[/]" if r["online"] else "[red]no[/]",
            r["agent_version"] or "",
            r["config_rev"] or "",
            ago(r["last_seen"]),
            "" if r["outbox_depth"] is None else str(r["outbox_depth"]),
        )
    Console().print(table)


@app.command("readings")
def readings(
    gateway: Annotated[str | None, typer.Option("--gateway", "-g", help="gateway id")] = None,
    device: Annotated[str | None, typer.Option("--device", "-d", help="device id")] = None,
    point: Annotated[str | None, typer.Option("--point", "-p", help="point name")] = None,
    since: Annotated[
        str | None, typer.Option(help="only newer than this, e.g. 30s, 10m, 2h")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many, newest first")] = 100,
    db: DbOpt = DEFAULT_DB,
    json_out: JsonOpt = False,
) -> None:
    """Readings stored at the center, newest first, with the edge's timestamps."""
    from central.store import Store

    rows = Store(require_db(db)).readings(gateway, device, point, parse_since(since), limit)
    if json_out:
        print_json([r.to_json() for r in rows])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("time (UTC)", "gateway", "device", "point", "value", "unit", "quality")
    for r in rows:
        stamp = _utc(r.ts)
        quality = r.quality if r.reason is None else f"{r.quality}: {r.reason}"
        table.add_row(stamp, r.gateway, r.device, r.point, _show(r.value), r.unit or "", quality)
    Console().print(table)


@app.command("losses")
def losses(
    gateway: Annotated[str | None, typer.Option("--gateway", "-g", help="gateway id")] = None,
    db: DbOpt = DEFAULT_DB,
    json_out: JsonOpt = False,
) -> None:
    """Readings gateways had to drop (outbox full, too old, disk full): which, and when."""
    from central.store import Store

    rows = Store(require_db(db)).losses(gateway)
    if json_out:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("gateway", "stream", "seq", "count", "taken from (UTC)", "to", "cause")
    for r in rows:
        table.add_row(
            r["gateway"],
            r["stream"],
            f"{r['first_seq']}..{r['last_seq']}",
            str(r["count"]),
            _utc(r["ts_first"]),
            _utc(r["ts_last"]),
            r["cause"],
        )
    Console().print(table)


def _utc(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _show(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def main() -> None:
    app()
