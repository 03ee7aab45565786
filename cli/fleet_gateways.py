"""``fleet gateways list|show``, ``fleet devices list`` and ``fleet status``: the fleet
registry as operators read it.

Over a hundred thousand gateways, nothing here lists the fleet to show a part of it: the
store sorts, filters (``--where``) and pages (``--limit``, ``--after``) in SQL, and the
long outputs stream (``--jsonl``, ``--all``) row by row. The table shows one page and says
how to ask for the next.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Annotated

import typer

from cli.apps import group
from cli.output import (
    Cell,
    Column,
    JsonlOpt,
    JsonOpt,
    Styled,
    ago,
    ids,
    print_fields,
    print_json,
    print_jsonl,
    print_rich,
    shown,
    table,
    utc,
)
from cli.store_options import DEFAULT_DB, DbOpt, open_db
from cli.where import WhereOpt, parse_where

if TYPE_CHECKING:
    from central.store.rows import DeviceRow, GatewayRow

gateways_app = group("Gateways of the fleet: list, show.")
devices_app = group("Devices of the gateways, from their health reports.")

PAGE = 50
TABLE_CHUNK = 500
"""``--all`` as a table: drawn this many rows at a time, so the first come at once."""

LimitOpt = Annotated[
    int, typer.Option("--limit", "-n", min=1, max=1_000_000, help="at most this many (a page)")
]
AfterOpt = Annotated[
    str | None, typer.Option("--after", help="the page after this gateway id (as listed)")
]
AllOpt = Annotated[bool, typer.Option("--all", help="every matching gateway, not one page")]

GATEWAY_COLUMNS = (
    "gateway",
    "site",
    "tags",
    "online",
    "since",
    "agent",
    "config",
    "last seen",
    "backlog",
    "alarms",
)


def tags_cell(tags: object) -> str:
    """``key=value, …`` as the gateway sent them; anything but a mapping as its JSON."""
    if isinstance(tags, dict):
        return ", ".join(f"{k}={shown(v)}" for k, v in tags.items())
    return shown(tags)


def _online(row: GatewayRow) -> Cell:
    return Styled("yes", "green") if row.online else Styled("no", "red")


def gateway_cells(r: GatewayRow) -> tuple[Cell, ...]:
    return (
        r.id,
        r.site or "",
        tags_cell(r.tags),
        _online(r),
        ago(r.online_since),
        r.agent_version or "",
        r.config_rev or "",
        ago(r.last_seen),
        "" if r.outbox_depth is None else str(r.outbox_depth),
        Styled(str(r.alarms_active), "red") if r.alarms_active else "0",
    )


@gateways_app.command("list")
def gateways_list(
    where: WhereOpt = None,
    limit: LimitOpt = PAGE,
    after: AfterOpt = None,
    all_: AllOpt = False,
    db: DbOpt = DEFAULT_DB,
    json_out: JsonOpt = False,
    jsonl: JsonlOpt = False,
) -> None:
    """List gateways by id, a page at a time: site, tags, online and since when, agent
    version, config revision, last seen, outbox backlog, active alarms."""
    filt = parse_where(where)
    store = open_db(db)
    rows = store.gateways(filt, after=after, limit=None if all_ else limit + 1)
    if jsonl:
        print_jsonl(r.to_json() for r in islice(rows, None if all_ else limit))
        return
    if json_out:
        print_json([r.to_json() for r in islice(rows, None if all_ else limit)])
        return
    if all_:
        _chunked_tables(rows)
        return
    page = list(rows)
    more = len(page) > limit
    page = page[:limit]
    _print_gateways(page)
    if more:
        hint = f"next page: fleet gateways list --after {page[-1].id}"
        typer.echo(f"{len(page)} shown; more match ({hint}, or --all)", err=True)
    elif not page:
        typer.echo("no gateway matches" if not filt.everything else "no gateways yet", err=True)


def _chunked_tables(rows: Iterator[GatewayRow]) -> None:
    while chunk := list(islice(rows, TABLE_CHUNK)):
        _print_gateways(chunk)


def _print_gateways(rows: list[GatewayRow]) -> None:
    columns = gateway_columns(rows)
    keep = [i for i, c in enumerate(GATEWAY_COLUMNS) if i == 0 or c in columns]
    print_rich(table(columns, ([gateway_cells(r)[i] for i in keep] for r in rows)))


NARROW = ("tags", "since", "config")
"""Left out on a terminal narrower than ``WIDE_COLUMNS`` (``gateways show`` has them)."""
WIDE_COLUMNS = 130


def _wide() -> bool:
    # loaded by the command that draws
    import shutil  # noqa: PLC0415

    return shutil.get_terminal_size((200, 24)).columns >= WIDE_COLUMNS


def gateway_columns(rows: list[GatewayRow]) -> tuple[str | Column, ...]:
    kept = GATEWAY_COLUMNS[1:] if _wide() else [c for c in GATEWAY_COLUMNS[1:] if c not in NARROW]
    return (ids("gateway", (r.id for r in rows)), *kept)


GatewayArg = Annotated[str, typer.Argument(metavar="GW", help="gateway id")]


@gateways_app.command("show")
def gateways_show(gateway: GatewayArg, db: DbOpt = DEFAULT_DB, json_out: JsonOpt = False) -> None:
    """One gateway: what the registry knows, its devices' links, its active alarms and the
    identities issued to it; exit 1 if the store has never heard of it."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    from central.store.api import AlarmQuery  # noqa: PLC0415

    store = open_db(db)
    row = store.gateway(gateway)
    if row is None:
        typer.echo(
            f"error: no such gateway: {gateway} (`fleet gateways list` lists them)", err=True
        )
        raise typer.Exit(1)
    devices = list(store.devices(gateway))
    alarms = [
        a
        for a in store.alarms(AlarmQuery(gateway, states=("active", "acknowledged")))
        if a.gateway == gateway
    ]
    identities = store.identities(gateway)
    if json_out:
        print_json(
            {
                **row.to_json(),
                "devices": [d.to_json() for d in devices],
                "alarms": [a.to_json() for a in alarms],
                "identities": [i.to_json() for i in identities],
            }
        )
        return
    fields = row.to_json()
    fields["tags"] = tags_cell(row.tags)
    print_fields(fields, times=("online_since", "started", "last_seen"))
    if devices:
        print_rich(
            table(device_columns(devices), (device_cells(d) for d in devices), title="devices")
        )
    if alarms:
        print_rich(
            table(
                ("since (UTC)", "alarm", "severity", "state", "value", "message"),
                (
                    (utc(a.since), a.alarm_id, a.severity, a.state, shown(a.value), a.msg)
                    for a in alarms
                ),
                title="active alarms",
            )
        )
    if identities:
        print_rich(
            table(
                ("kind", "sha256", "issued (UTC)", "expires (UTC)", "revoked (UTC)"),
                (
                    (i.kind, i.fingerprint, utc(i.issued), utc(i.expires), utc(i.revoked))
                    for i in identities
                ),
                title="identities",
            )
        )


DEVICE_COLUMNS = ("gateway", "device", "link", "last good reading (UTC)", "error", "reported")


def device_columns(rows: list[DeviceRow]) -> tuple[str | Column, ...]:
    return (
        ids("gateway", (d.gateway for d in rows)),
        ids("device", (d.device for d in rows)),
        *DEVICE_COLUMNS[2:],
    )


def device_cells(d: DeviceRow) -> tuple[Cell, ...]:
    link: Cell = d.link or "unknown"
    if d.link == "up":
        link = Styled("up", "green")
    elif d.link is not None:
        link = (Styled("●", "red"), " ", d.link)
    return (d.gateway, d.device, link, utc(d.last_good), d.error or "", ago(d.updated))


@devices_app.command("list")
def devices_list(
    gateway: Annotated[
        str | None, typer.Argument(metavar="[GW]", help="only this gateway's devices")
    ] = None,
    where: WhereOpt = None,
    db: DbOpt = DEFAULT_DB,
    json_out: JsonOpt = False,
    jsonl: JsonlOpt = False,
) -> None:
    """Devices by gateway: link state (up, down, …) and the last good reading, as the
    gateways' health reports say."""
    rows = open_db(db).devices(gateway, parse_where(where))
    if jsonl:
        print_jsonl(r.to_json() for r in rows)
    elif json_out:
        print_json([r.to_json() for r in rows])
    else:
        found = list(rows)
        print_rich(table(device_columns(found), (device_cells(d) for d in found)))
        if not found:
            typer.echo("no devices reported yet", err=True)


EXPIRY_WARNING_S = 30 * 86400
EXPIRING_SHOWN = 10


def status(db: DbOpt = DEFAULT_DB, json_out: JsonOpt = False) -> None:
    """The fleet on one screen: gateways online and offline, active alarms by severity,
    gateways with a backlog or data loss, agent versions in the field, ingest rate, and
    the gateways whose certificates expire within 30 days."""
    now = time.time()
    store = open_db(db)
    try:
        s = store.status(now)
        expiring = store.expiring(now + EXPIRY_WARNING_S)
    finally:
        store.close()
    if json_out:
        listed = [{"gateway": i.gateway, "expires": i.expires} for i in expiring]
        print_json(s.to_json() | {"certificates_expiring": listed})
        return
    severities = ", ".join(f"{k} {v}" for k, v in s.alarms_by_severity.items()) or "none"
    versions = ", ".join(f"{k} ×{v}" for k, v in s.versions.items()) or "none"
    rows: list[tuple[Cell, ...]] = [
        ("gateways", str(s.gateways)),
        ("online", Styled(str(s.online), "green")),
        ("offline", Styled(str(s.offline), "red") if s.offline else "0"),
        ("active alarms", severities),
        ("unacknowledged alarms", Styled(str(s.unacked), "bold") if s.unacked else "0"),
        ("with a backlog", str(s.with_backlog)),
        ("with data loss", str(s.with_losses)),
        ("agent versions", versions),
        ("readings, this minute and the last", str(s.readings_last_minute)),
    ]
    rows.append(
        (
            "certificates expiring in 30 days",
            Styled(str(len(expiring)), "yellow") if expiring else "0",
        )
    )
    print_rich(table(("fleet", ""), rows))
    if expiring:
        soon: list[tuple[Cell, ...]] = [
            (i.gateway, time.strftime("%Y-%m-%d %H:%M", time.gmtime(i.expires or 0)))
            for i in expiring[:EXPIRING_SHOWN]
        ]
        if len(expiring) > EXPIRING_SHOWN:
            soon.append((f"… and {len(expiring) - EXPIRING_SHOWN} more", "--json lists all"))
        print_rich(table(("certificate of", "expires (UTC)"), soon))
