"""``fleet watch``: the fleet's alarms and state, live, as the center commits them.

It reads the store once, at start (the counts of ``fleet status`` and the alarms not yet
cleared and acknowledged), then listens to the center's feed (``central.feed``:
``<root>/center/feed``, one event per committed round, from every ingest worker) and
updates from each event: an alarm's new state, a gateway going online or offline, the
readings stored. It never polls the store on a timer; an event that names a gateway or
an alarm makes it read that one row (the feed says what moved, the store says where it
is now: a gateway or an alarm the store does not hold is not shown), and the fleet's
counts again at most every ``COUNTS_EVERY_S`` while events come.

On a terminal the view is a Rich Live screen that fits it (the newest alarms first, cut
to the height); piped (``fleet watch | tee``), it writes one line per change instead, as
``tail -f`` would, so that scripts and logs can follow the fleet too.

The feed is input from the network: an event that is not what the center sends (bad
JSON, wrong types, more than ``MAX_ITEMS`` items) is counted and dropped, and every text
shown goes through ``printable``.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.broker_options import (
    DEFAULT_BROKER,
    BrokerOpt,
    CaFileOpt,
    CertFileOpt,
    KeyFileOpt,
    PasswordFileOpt,
    UsernameOpt,
    broker_settings,
)
from cli.durations import length_option
from cli.output import Styled, printable, text, utc
from cli.store_options import DEFAULT_DB, DbOpt, open_db
from cli.topic_options import RootOpt
from edge_agent.contract.topics import DEFAULT_ROOT

if TYPE_CHECKING:
    from rich.console import RenderableType

    from central.store import Store
    from central.store.rows import FleetStatus

COUNTS_EVERY_S = 2.0
MAX_ITEMS = 1000
RATE_WINDOW_S = 10.0
SEVERITY_ORDER = {"critical": 0, "major": 1, "minor": 2, "warning": 3}
SHOWN_STATES = ("active", "acknowledged", "cleared_unacked")
"""An alarm stays on the screen until it is cleared and acknowledged."""
STATE_STYLE = {"active": "bold red", "acknowledged": "yellow", "cleared_unacked": "cyan"}


@dataclass(slots=True)
class Alarm:
    gateway: str
    alarm_id: str
    severity: str
    state: str
    since: float


@dataclass(slots=True)
class View:
    """What the screen shows, kept up to date from the feed."""

    status: FleetStatus
    alarms: dict[tuple[str, str], Alarm] = field(default_factory=dict)
    changes: deque[str] = field(default_factory=lambda: deque(maxlen=5))
    stored: deque[tuple[float, int]] = field(default_factory=deque)
    events: int = 0
    dropped: int = 0
    connected: bool = False
    stale: bool = False
    """Something moved since the counts were read."""
    counted: float = 0.0

    def rate(self, now: float) -> float:
        while self.stored and self.stored[0][0] < now - RATE_WINDOW_S:
            self.stored.popleft()
        return sum(n for _, n in self.stored) / RATE_WINDOW_S


def watch(
    db: DbOpt = DEFAULT_DB,
    broker: BrokerOpt = DEFAULT_BROKER,
    topic_root: RootOpt = DEFAULT_ROOT,
    duration: Annotated[
        str | None, typer.Option(help="stop after this long (30s, 10m); default: until Ctrl-C")
    ] = None,
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    cert_file: CertFileOpt = None,
    key_file: KeyFileOpt = None,
) -> None:
    """A live view of the fleet's alarms and state, updated as the center commits what
    gateways send (its feed), not by polling the store; piped, one line per change."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    from central.store.api import AlarmQuery  # noqa: PLC0415
    from edge_agent.contract import Topics  # noqa: PLC0415
    from mqttlink.session import Message, Session, SessionError  # noqa: PLC0415

    until = None if duration is None else time.monotonic() + length_option(duration, "--duration")
    url = broker_settings(broker, username, password_file, ca_file, cert_file, key_file)
    store = open_db(db)
    view = View(status=store.status())
    for a in store.alarms(AlarmQuery(states=SHOWN_STATES)):
        view.alarms[(a.gateway, a.alarm_id)] = Alarm(
            a.gateway, a.alarm_id, a.severity, a.state, a.since or a.ts
        )
    inbox: queue.Queue[bytes] = queue.Queue(maxsize=10_000)

    def on_feed(msg: Message) -> None:
        try:
            inbox.put_nowait(bytes(msg.payload))
        except queue.Full:  # a flood: the screen shows counts, not every event
            view.dropped += 1

    session = Session(url, name="fleet-watch", keepalive_s=10)
    session.subscribe(Topics(topic_root).feed(), on_feed)
    session.on_up(lambda _present: setattr(view, "connected", True))
    session.on_down(lambda _why: setattr(view, "connected", False))
    try:
        session.open(timeout_s=10)
    except SessionError as exc:
        typer.echo(f"error: broker {url}: {exc}", err=True)
        raise typer.Exit(1) from None
    view.connected = True
    try:
        if sys.stdout.isatty():
            _live(view, store, inbox, until)
        else:
            _lines(view, store, inbox, until)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()


def _events(
    inbox: queue.Queue[bytes], until: float | None, wait_s: float
) -> Iterator[bytes | None]:
    """Feed payloads as they come; None every ``wait_s`` without one; ends at ``until``."""
    while until is None or time.monotonic() < until:
        left = wait_s if until is None else max(0.0, min(wait_s, until - time.monotonic()))
        try:
            yield inbox.get(timeout=left)
        except queue.Empty:
            yield None


def _lines(view: View, store: Store, inbox: queue.Queue[bytes], until: float | None) -> None:
    print(_summary(view, time.time()), flush=True)
    for payload in _events(inbox, until, 1.0):
        if payload is not None:
            for line in apply(view, store, payload, time.time()):
                print(line, flush=True)


def _live(view: View, store: Store, inbox: queue.Queue[bytes], until: float | None) -> None:
    # rich loads only when the screen is drawn
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415

    console = Console()
    first = render(view, console.size.height, time.time())
    with Live(first, console=console, screen=True, auto_refresh=False) as live:
        for payload in _events(inbox, until, 0.5):
            now = time.time()
            if payload is not None:
                apply(view, store, payload, now)
            live.update(render(view, console.size.height, now), refresh=True)


def apply(view: View, store: Store, payload: bytes, now: float) -> list[str]:
    """Update ``view`` from one feed event; the changes it made, as lines for a log. The
    fleet's counts are read again when the event moved something, at most every
    ``COUNTS_EVERY_S`` (a flood of events must not become a flood of queries)."""
    event = parse_event(payload)
    if event is None:
        view.dropped += 1
        return []
    view.events += 1
    lines: list[str] = []
    if event["readings"]:
        view.stored.append((now, event["readings"]))
    # the feed only says what to read again: anyone who can publish on it could say
    # anything, so what is shown is the store's, and a row the store does not hold is not
    online: dict[str, bool] = {}
    if event["gateways"]:  # one query for the event's gateways, not one each
        # loaded with the first event that names a gateway
        from central.store.api import GatewayFilter  # noqa: PLC0415

        ids = tuple(dict.fromkeys(gw for gw, _ in event["gateways"]))
        online = {g.id: g.online for g in store.gateways(GatewayFilter(ids=ids))}
    for gw, said in event["gateways"]:
        if online.get(gw) is not said:  # forged, or already past
            continue
        word = "online" if said else "offline"
        line = printable(f"{utc(now)} {gw} {word}")
        view.changes.append(line)
        lines.append(line)
    for key in dict.fromkeys((gw, alarm_id) for gw, alarm_id, _, _ in event["alarms"]):
        gw, alarm_id = key
        row = store.alarm(gw, alarm_id)  # once an event: the store says the same each time
        if row is None:
            continue
        if row.state in SHOWN_STATES:
            view.alarms[key] = Alarm(gw, alarm_id, row.severity, row.state, row.since or row.ts)
        else:
            view.alarms.pop(key, None)
        lines.append(printable(f"{utc(now)} {gw} {alarm_id} {row.severity} {row.state}"))
    if event["gateways"] or event["alarms"]:
        view.stale = True
    if view.stale and now - view.counted >= COUNTS_EVERY_S:
        view.status = store.status()
        view.stale, view.counted = False, now
    return lines


def parse_event(payload: bytes) -> dict[str, Any] | None:
    """A feed event as the center sends it, or None: readings, and (gateway, online) and
    (gateway, alarm_id, severity, state) items, every field of its type."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    readings = obj.get("readings", 0)
    alarms, gateways = obj.get("alarms", []), obj.get("gateways", [])
    if type(readings) is not int or readings < 0:
        return None
    if not isinstance(alarms, list) or not isinstance(gateways, list):
        return None
    if len(alarms) > MAX_ITEMS or len(gateways) > MAX_ITEMS:
        return None
    out_alarms = []
    for a in alarms:
        fields = (
            [a.get(k) for k in ("gateway", "alarm_id", "severity", "state")]
            if isinstance(a, dict)
            else []
        )
        if len(fields) != 4 or not all(isinstance(f, str) and 0 < len(f) <= 256 for f in fields):
            return None
        out_alarms.append(tuple(fields))
    out_gateways = []
    for g in gateways:
        gw = g.get("gateway") if isinstance(g, dict) else None
        online = g.get("online") if isinstance(g, dict) else None
        if not isinstance(gw, str) or not 0 < len(gw) <= 256 or not isinstance(online, bool):
            return None
        out_gateways.append((gw, online))
    return {"readings": readings, "alarms": out_alarms, "gateways": out_gateways}


def _summary(view: View, now: float) -> str:
    s = view.status
    alarms = ", ".join(f"{k} {v}" for k, v in s.alarms_by_severity.items()) or "none"
    return (
        f"{s.gateways} gateways: {s.online} online, {s.offline} offline; active alarms: "
        f"{alarms}; {view.rate(now):.0f} readings/s"
    )


def render(view: View, height: int, now: float) -> RenderableType:
    """The screen: a line of counts, the recent gateway changes, then the alarms, most
    severe and newest first, as many as fit in ``height`` lines: one line each, ids whole
    (they are what ``fleet alarms ack`` takes), no rules, so that 80 columns hold a
    row."""
    # rich loads only when the screen is drawn
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    s = view.status
    severities = ", ".join(f"{k} {v}" for k, v in s.alarms_by_severity.items()) or "none"
    head = Text(no_wrap=True, overflow="ellipsis")
    link = Styled("live", "green") if view.connected else Styled("reconnecting", "red")
    head.append(link.text, style=link.style)  # first: what says whether the rest is current
    if view.dropped:
        head.append(f" ({view.dropped} events dropped)", style="yellow")
    head.append(
        printable(
            f" · {s.gateways} gateways, {s.online} online, {s.offline} offline · alarms: "
            f"{severities} · {view.rate(now):.0f} readings/s"
        )
    )
    changes = [Text(c, no_wrap=True, overflow="ellipsis") for c in view.changes]
    ordered = sorted(
        view.alarms.values(),
        key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), -a.since),
    )
    room = max(0, height - 1 - len(changes) - 2)  # the title and the header
    shown = ordered[:room]
    title = f"alarms ({len(ordered)})" + (
        f", {len(shown)} shown" if len(shown) < len(ordered) else ""
    )
    alarms = Table(
        title=Text(title),
        box=None,
        pad_edge=False,
        padding=(0, 1, 0, 0),
        header_style="bold underline",
    )
    cells = [
        (_since(a.since, now), printable(a.gateway), printable(a.alarm_id), a.severity, a.state)
        for a in shown
    ]
    for i, header in enumerate(("since", "gateway", "alarm", "severity", "state")):
        width = max((len(c[i]) for c in cells), default=len(header))
        # the ids whole (up to a point), the others as wide as they are
        alarms.add_column(header, no_wrap=True, min_width=min(max(width, len(header)), 48))
    for a, (since, *_) in zip(shown, cells, strict=True):
        alarms.add_row(
            since,
            text(a.gateway),
            text(a.alarm_id),
            text(a.severity),
            text(Styled(a.state, STATE_STYLE[a.state])),
        )
    return Group(head, *changes, alarms)


def _since(ts: float, now: float) -> str:
    """``HH:MM:SS`` (UTC) today, the date as well before."""
    when = utc(ts)
    return when[11:19] if utc(now)[:10] == when[:10] else when[:16]
