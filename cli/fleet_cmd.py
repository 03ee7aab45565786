"""``fleet cmd`` and ``fleet commands``: gateway commands (``ping``, ``read``, ``write``,
``restart``) to one gateway or to every gateway ``--where`` names, and their ledger.

Each command is signed (the center's key), sent with its own correlation data, and waited
for up to ``--timeout`` from its own send (``central.commands.send_many``); a progress bar
counts the answers on a terminal; the result is one row per gateway. Every command and
its outcome goes to the command ledger of the store (``fleet commands`` lists it), written
before the command leaves and updated when it ends, so a crash in between leaves a row
without a result, never a command nobody can account for.

Exit codes: 0 every gateway answered ok; 1 any refused, failed or timed out (or nothing
could be sent: no key, no broker); 2 a usage error (an unknown action, a bad ``--where``,
no gateway matching it).
"""

from __future__ import annotations

import json
import math
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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
from cli.output import (
    Cell,
    Column,
    JsonOpt,
    Styled,
    ids,
    inline,
    print_json,
    print_rich,
    shown,
    table,
    utc,
)
from cli.store_options import DEFAULT_DB, DbOpt, open_db
from cli.topic_options import KeyOpt, RootOpt, by_option
from cli.where import WhereOpt, parse_where
from edge_agent.contract.topics import DEFAULT_ROOT

if TYPE_CHECKING:
    from central.commands import Outcome, Sent
    from central.store import Store
    from central.store.rows import CommandRecord

ACTIONS = ("ping", "read", "write", "restart")
RESULT_STYLE = {"ok": "green", "refused": "yellow", "timeout": "red", "failed": "red"}
TIMEOUT_MIN_S, TIMEOUT_MAX_S = 0.1, 3600.0


def timeout_option(value: float) -> float:
    """``--timeout`` in seconds, finite and in range: ``nan`` fails every comparison, so a
    range check alone would call it out of range in a way that reads as a lie."""
    if not math.isfinite(value):
        raise typer.BadParameter(
            f"{value} is not a time: give a finite number of seconds "
            f"({TIMEOUT_MIN_S:g} to {TIMEOUT_MAX_S:g})"
        )
    if not TIMEOUT_MIN_S <= value <= TIMEOUT_MAX_S:
        raise typer.BadParameter(
            f"give {TIMEOUT_MIN_S:g} to {TIMEOUT_MAX_S:g} seconds, not {value:g}"
        )
    return value


def cmd(
    words: Annotated[
        list[str],
        typer.Argument(
            metavar="[GW] ACTION",
            help="a gateway id and ping, read, write or restart; with --where, the action only",
        ),
    ],
    where: WhereOpt = None,
    device: Annotated[
        str | None, typer.Option("--device", "-d", help="read, write: the device")
    ] = None,
    point: Annotated[
        str | None, typer.Option("--point", "-p", help="read, write: the point")
    ] = None,
    value: Annotated[
        str | None,
        typer.Option(help='write: the value (true, false, a number, or text; "42" for text)'),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            help="seconds to wait for each gateway's reply (0.1 to 3600)", callback=timeout_option
        ),
    ] = 10.0,
    by: Annotated[
        str, typer.Option(help="who asks (in the ledger and the gateway's log)", callback=by_option)
    ] = "operator",
    db: DbOpt = DEFAULT_DB,
    broker: BrokerOpt = DEFAULT_BROKER,
    topic_root: RootOpt = DEFAULT_ROOT,
    key: KeyOpt = Path("center.key"),
    json_out: JsonOpt = False,
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    cert_file: CertFileOpt = None,
    key_file: KeyFileOpt = None,
) -> None:
    """Send a signed command (ping, read, write, restart) to a gateway, or to every gateway
    --where matches, in parallel; one result row per gateway; exit 1 if any did not
    answer ok in --timeout."""
    # loaded by the command that uses it: fleet --help stays under 0.3 s
    from central.commands import CommandFailed, send_many  # noqa: PLC0415
    from edge_agent.contract import Topics  # noqa: PLC0415

    gateway, action = _target(words, where)
    args = _args(action, device, point, value, by)
    filt = parse_where(where)
    url = broker_settings(broker, username, password_file, ca_file, cert_file, key_file)
    store = open_db(db)
    if gateway is not None:
        targets = [gateway]
    else:
        targets = [g.id for g in store.gateways(filt)]
        if not targets:
            raise typer.BadParameter("no gateway matches", param_hint="--where")
    if not key.exists():
        typer.echo(f"error: no signing key at {key} (fleet keys init creates one)", err=True)
        raise typer.Exit(1)
    ledger = Ledger(store, by)
    with _progress(len(targets), enabled=not json_out) as advance, _interrupt() as stop:

        def outcome(o: Outcome) -> None:
            ledger.ended(o)
            advance(o)

        try:
            outcomes = send_many(
                url,
                Topics(topic_root),
                targets,
                action,
                args,
                key,
                timeout_s=timeout,
                on_sent=ledger.sent,
                on_outcome=outcome,
                stop=stop,
            )
        except CommandFailed as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    order = {gw: i for i, gw in enumerate(targets)}
    outcomes.sort(key=lambda o: order.get(o.gateway, len(order)))
    _print(outcomes, action, json_out)
    if any(o.result != "ok" for o in outcomes) or len(outcomes) < len(targets):
        raise typer.Exit(1)


def _target(words: list[str], where: str | None) -> tuple[str | None, str]:
    """``(gateway, action)`` from ``[GW] ACTION`` (``GW`` None with ``--where``)."""
    # loaded by the command that uses it
    from cli.topic_options import gateway_option  # noqa: PLC0415

    if len(words) == 1 and where is not None:
        gateway, action = None, words[0]
    elif len(words) == 2 and where is None:
        gateway, action = gateway_option(words[0]), words[1]
    elif where is not None:
        raise typer.BadParameter("with --where, give the action only (ping, read, …), no GW")
    else:
        raise typer.BadParameter("give GW ACTION (fleet cmd gw-1 ping), or --where … ACTION")
    if action not in ACTIONS:
        raise typer.BadParameter(f"{action!r} is not an action; use one of {', '.join(ACTIONS)}")
    return gateway, action


def _args(
    action: str, device: str | None, point: str | None, value: str | None, by: str
) -> dict[str, Any]:
    if action in ("read", "write") and (device is None or point is None):
        raise typer.BadParameter(f"{action} needs --device and --point")
    if action not in ("read", "write") and (device or point):
        raise typer.BadParameter(f"{action} takes no --device or --point")
    if (action == "write") != (value is not None):
        raise typer.BadParameter(
            "write needs --value" if action == "write" else f"{action} takes no --value"
        )
    if action == "ping":
        return {}
    if action == "restart":
        return {"by": by}
    args: dict[str, Any] = {"device": device, "point": point}
    if action == "write":
        args |= {"value": _value(value or ""), "by": by}
    return args


def _value(text: str) -> bool | int | float | str:
    """``true``/``false``, a number, or text (JSON's rules: ``"42"`` is the text 42)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    if isinstance(parsed, bool | int | float | str):
        return parsed
    raise typer.BadParameter("a value is true, false, a number or a text", param_hint="--value")


class Ledger:
    """The store's command ledger, written on the command's own thread."""

    @classmethod
    def at(cls, db: str, by: str) -> Ledger | None:
        """The ledger of the central store at ``db``, or None where there is none (a
        command sent from a machine without the store is sent all the same)."""
        # loaded by the command that uses it
        from central.store import is_postgres  # noqa: PLC0415
        from cli.store_options import store_problem  # noqa: PLC0415

        if not is_postgres(db) and store_problem(Path(db)) is not None:
            return None
        return cls(open_db(db), by)

    def __init__(self, store: Store, by: str) -> None:
        self.store = store
        self.by = by

    def sent(self, s: Sent) -> None:
        # loaded by the command that uses it
        from central.store.rows import CommandRecord  # noqa: PLC0415

        self.store.record_command(
            CommandRecord(s.command_id, s.gateway, s.cmd, s.args, self.by, s.sent)
        )

    def ended(self, o: Outcome) -> None:
        self.store.command_result(o.command_id, o.result, o.detail, o.replied)


class _progress:
    """A progress bar on stderr while answers come, on a terminal only."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.bar: Any = None

    def __enter__(self) -> Any:
        import sys  # noqa: PLC0415

        if self.enabled and self.total > 1 and sys.stderr.isatty():
            # rich loads only when a bar is drawn
            from rich.console import Console  # noqa: PLC0415
            from rich.progress import Progress  # noqa: PLC0415

            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.bar.start()
            task = self.bar.add_task("answers", total=self.total)
            return lambda _o: self.bar.advance(task)
        return lambda _o: None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextmanager
def _interrupt() -> Iterator[threading.Event]:
    """Set by Ctrl-C while the commands are out: outstanding commands end as failed, the
    rest is not sent. After, Ctrl-C stops the process again (it was swallowed for good)."""
    import signal  # noqa: PLC0415

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _print(outcomes: list[Outcome], action: str, json_out: bool) -> None:
    if json_out:
        print_json(
            [
                {
                    "gateway": o.gateway,
                    "id": o.command_id,
                    "cmd": action,
                    "result": o.result,
                    "detail": o.detail,
                    "sent": o.sent,
                    "replied": o.replied,
                }
                for o in outcomes
            ]
        )
        return
    print_rich(
        table(
            (ids("gateway", (o.gateway for o in outcomes)), "result", "ms", "detail"),
            (_cells(o) for o in outcomes),
        )
    )
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    typer.echo(", ".join(f"{n} {r}" for r, n in sorted(counts.items())), err=True)


def _cells(o: Outcome) -> tuple[Cell, ...]:
    ms = "" if o.replied is None else f"{(o.replied - o.sent) * 1000:.0f}"
    detail = inline(o.detail) if isinstance(o.detail, dict) else shown(o.detail)
    return (o.gateway, Styled(o.result, RESULT_STYLE[o.result]), ms, detail)


def commands(
    gateway: Annotated[str | None, typer.Option("--gateway", "-g", help="gateway id")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1_000_000, help="at most this many")] = 100,
    db: DbOpt = DEFAULT_DB,
    json_out: JsonOpt = False,
) -> None:
    """The command ledger, newest first: what was sent to whom, when, by whom, and with
    what result (empty while no answer came)."""
    rows = open_db(db).commands(gateway, limit)
    if json_out:
        print_json([r.to_json() for r in rows])
        return
    wide = shutil.get_terminal_size((200, 24)).columns >= WIDE_COLUMNS
    columns: list[str | Column] = ["sent (UTC)", ids("gateway", (r.gateway for r in rows))]
    columns += ["command", "args", "by", "result", "detail"] if wide else ["command", "result"]
    print_rich(table(columns, (_ledger_cells(r, wide) for r in rows)))


WIDE_COLUMNS = 130
"""``fleet commands`` shows args, by and the reply's detail from this width (``--json``
has them always)."""


def _ledger_cells(r: CommandRecord, wide: bool) -> list[Cell]:
    result = Styled(r.result, RESULT_STYLE.get(r.result, "")) if r.result else "(no answer)"
    if not wide:
        return [utc(r.sent), r.gateway, r.cmd, result]
    return [
        utc(r.sent),
        r.gateway,
        r.cmd,
        inline(r.args) if r.args else "",
        r.by or "",
        result,
        inline(r.detail) if isinstance(r.detail, dict) else shown(r.detail),
    ]
