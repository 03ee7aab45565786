"""`edge-agent rules test --replay`: recorded series through the shipped packs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cli.rules import SHOWN_PROBLEMS
from tests.support import run_cli

LIFT_POINTS = [
    "running",
    "door_open",
    "door_zone",
    "person_in_car",
    "speed",
    "limit_top",
    "limit_bottom",
    "door_fault",
    "fault_code",
]


def lift_config(tmp: Path) -> Path:
    points = "\n".join(
        f"      - {{name: {name}, table: holding, address: {i}, type: uint16}}"
        for i, name in enumerate(LIFT_POINTS)
    )
    f = tmp / "agent.yaml"
    f.write_text(
        "gateway: {id: lift-gw}\nrule_packs: [elevator]\ndevices:\n"
        "  - id: lift-7\n    modbus: {host: 127.0.0.1}\n    poll_s: 0.5\n    points:\n"
        f"{points}\n"
    )
    return f


class Series:
    """A lift's signals sampled every 0.5 s, written as the CSV a technician would record."""

    def __init__(self) -> None:
        self.t = 0.0
        self.rows: list[tuple[float, str, str, Any]] = []
        self.state: dict[str, Any] = {p: 0 for p in LIFT_POINTS}
        self.state.update(door_zone=1)

    def hold(self, seconds: float, **changes: Any) -> None:
        self.state.update(changes)
        for _ in range(int(seconds / 0.5)):
            for point, value in self.state.items():
                self.rows.append((round(self.t, 3), "lift-7", point, value))
            self.t += 0.5

    def trip(self) -> None:
        self.hold(6, door_open=1, person_in_car=1)  # boarding
        self.hold(3, door_open=0)  # doors close at the landing
        self.hold(12, running=1, door_zone=0, speed=1.6)  # travelling
        self.hold(2, running=0, door_zone=1, speed=0)  # levelling at the next landing
        self.hold(6, door_open=1)  # doors open, passenger leaves
        self.hold(2, person_in_car=0, door_open=0)

    def write(self, path: Path) -> Path:
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ts", "device", "point", "value"])
            w.writerows(self.rows)
        return path


def replay(cfg: Path, series: Path) -> list[dict[str, Any]]:
    out = run_cli(
        "edge-agent",
        "rules",
        "test",
        "-c",
        str(cfg),
        "--replay",
        str(series),
        "--tail",
        "5",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


def test_normal_trips_with_door_cycles_raise_nothing(tmp_path: Path) -> None:
    s = Series()
    for _ in range(6):
        s.trip()
    assert replay(lift_config(tmp_path), s.write(tmp_path / "trips.csv")) == []


def test_entrapment_raises_trapped_exactly_once(tmp_path: Path) -> None:
    s = Series()
    s.trip()
    s.hold(6, door_open=1, person_in_car=1)
    s.hold(3, door_open=0)
    s.hold(5, running=1, door_zone=0, speed=1.6)
    stopped = s.t
    s.hold(90, running=0, speed=0)  # stuck between floors, door shut, someone inside
    s.hold(12, door_open=1)  # rescue opens the door
    events = replay(lift_config(tmp_path), s.write(tmp_path / "trapped.csv"))
    trapped = [e for e in events if e["rule"] == "lift.trapped"]
    assert [e["state"] for e in trapped] == ["active", "cleared_unacked"]
    assert trapped[0]["severity"] == "critical"
    assert stopped + 30 <= trapped[0]["ts"] <= stopped + 31  # the 30 s on-delay
    assert {e["rule"] for e in events} == {"lift.trapped"}


def test_human_readable_output_and_a_bad_series(tmp_path: Path) -> None:
    cfg = lift_config(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("ts,device,point,value\nsoon,lift-7,running,1\n")
    out = run_cli("edge-agent", "rules", "test", "-c", str(cfg), "--replay", str(bad))
    assert out.returncode == 1 and f"{bad}:2: ts 'soon' is neither seconds nor" in out.stderr
    s = Series()
    s.trip()
    out = run_cli(
        "edge-agent", "rules", "test", "-c", str(cfg), "--replay", str(s.write(tmp_path / "ok.csv"))
    )
    assert out.returncode == 0 and out.stdout.strip() == "no alarms"


def rules_test(cfg: Path, series: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("edge-agent", "rules", "test", "-c", str(cfg), "--replay", str(series), *extra)


def test_every_row_that_cannot_be_replayed_is_reported_with_its_line(tmp_path: Path) -> None:
    cfg = lift_config(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "ts,device,point,value\n"
        "10,lift-7,running,0\n"
        "11,lift-9,running,1\n"  # 3: no such device
        "12,lift-7,runing,1\n"  # 4: no such point
        "13,lift-7,speed,abc\n"  # 5: not a value
        "14,lift-7,speed,nan\n"  # 6: not a finite value
        "20,lift-7,door_open,1\n"
        "15,lift-7,door_open,0\n"  # 8: backwards
        '16,lift-7,"door\nzone",1\n'  # 9-10: a quoted field over two lines, no such point
        "21,lift-7,speed\n"  # 11: a field short
        "22,lift-7,speed,1\n"
    )
    for extra in ((), ("--json",)):
        out = rules_test(cfg, bad, *extra)
        assert out.returncode == 1
        assert out.stdout == ""  # neither "no alarms" nor an empty JSON list
        problems = out.stderr.splitlines()
        assert problems[:-1] == [
            f"{bad}:3: unknown device 'lift-9' (the gateway has lift-7)",
            f"{bad}:4: device 'lift-7' has no point 'runing' (it has "
            "door_fault, door_open, door_zone, fault_code, limit_bottom, limit_top, "
            "person_in_car, running and 1 more)",
            f"{bad}:5: value 'abc' is not a number, true/false or empty",
            f"{bad}:6: value 'nan' is not a finite number",
            f"{bad}:8: ts 15.000 goes back in time (line 7 is at 20.000)",
            f"{bad}:9: device 'lift-7' has no point 'door\\nzone' (it has "
            "door_fault, door_open, door_zone, fault_code, limit_bottom, limit_top, "
            "person_in_car, running and 1 more)",
            f"{bad}:11: 3 fields, fewer than the header's 4",
        ]
        assert problems[-1] == "error: 7 rows cannot be replayed; nothing replayed"


def test_timestamps_in_iso_8601_with_an_offset_or_z_replay_as_epoch_seconds(
    tmp_path: Path,
) -> None:
    cfg = lift_config(tmp_path)
    s = Series()
    s.t = 1_772_352_000.0  # 2026-03-01T08:00:00Z
    s.trip()
    s.hold(6, door_open=1, person_in_car=1)
    s.hold(3, door_open=0)
    s.hold(5, running=1, door_zone=0, speed=1.6)
    s.hold(40, running=0, speed=0)  # trapped
    epoch = s.write(tmp_path / "epoch.csv")
    expected = replay(cfg, epoch)
    assert [e["rule"] for e in expected] == ["lift.trapped"]
    for name, stamp in (
        ("z", lambda t: datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")),
        ("offset", lambda t: datetime.fromtimestamp(t, timezone(timedelta(hours=2))).isoformat()),
    ):
        iso = tmp_path / f"{name}.csv"
        iso.write_text(
            "".join(
                f"{stamp(float(ts)) if i else ts},{rest}\n"
                for i, (ts, _, rest) in enumerate(
                    line.partition(",") for line in epoch.read_text().splitlines()
                )
            )
        )
        assert "T" in iso.read_text().splitlines()[1]
        assert replay(cfg, iso) == expected
    naive = tmp_path / "naive.csv"
    naive.write_text("ts,device,point,value\n2026-03-01T08:00:00,lift-7,running,1\n")
    out = rules_test(cfg, naive)
    assert out.returncode == 1
    assert f"{naive}:2: ts '2026-03-01T08:00:00' has no offset" in out.stderr


def test_an_export_of_stored_readings_replays_with_its_extra_columns_and_order(
    tmp_path: Path,
) -> None:
    """The shape ``fleet readings`` lists: gateway and quality columns, other columns,
    newest first; rows of another gateway cannot be replayed on this one."""
    cfg = lift_config(tmp_path)
    s = Series()
    s.trip()
    s.hold(6, door_open=1, person_in_car=1)
    s.hold(3, door_open=0)
    s.hold(5, running=1, door_zone=0, speed=1.6)
    s.hold(40, running=0, speed=0)
    expected = replay(cfg, s.write(tmp_path / "plain.csv"))
    export = tmp_path / "export.csv"
    with export.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["gw", "dev", "pt", "ts", "value", "unit", "quality", "reason"])
        for ts, dev, pt, value in reversed(s.rows):
            w.writerow(["lift-gw", dev, pt, ts, value, "", "good", ""])
    assert replay(cfg, export) == expected

    with export.open("a", newline="") as f:
        csv.writer(f).writerow(["other-gw", "lift-7", "running", 0, 1, "", "good", ""])
        csv.writer(f).writerow(["lift-gw", "lift-7", "running", 0, 1, "", "fine", ""])
    out = rules_test(cfg, export)
    lines = len(s.rows) + 1
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"{export}:{lines + 1}: gateway 'other-gw' is not this config's ('lift-gw')",
        f"{export}:{lines + 2}: quality 'fine' is not one of good, bad, stale",
        "error: 2 rows cannot be replayed; nothing replayed",
    ]


def test_a_file_of_garbage_gets_a_bounded_report_and_no_traceback(tmp_path: Path) -> None:
    cfg = lift_config(tmp_path)
    many = tmp_path / "many.csv"
    many.write_text("ts,device,point,value\n" + "x,lift-7,speed,1\n" * 10_000)
    out = rules_test(cfg, many)
    assert out.returncode == 1
    assert len(out.stderr.splitlines()) == SHOWN_PROBLEMS + 1
    assert out.stderr.splitlines()[-1] == (
        f"error: 10000 rows cannot be replayed ({10_000 - SHOWN_PROBLEMS} more not shown); "
        "nothing replayed"
    )
    cases = {
        "binary.csv": b"ts,device,point,value\n1,lift-7,speed,\xff\xfe\n",
        "noheader.csv": b"1,lift-7,speed,1\n",
        "empty.csv": b"",
        "twice.csv": b"ts,device,dev,point,value\n",
        "huge.csv": b"ts,device,point,value\n1,lift-7,speed,1\n2,lift-7,speed," + b"9" * 200_000,
    }
    expected = {
        "binary.csv": ":2: not UTF-8 text (byte 0xff)",
        "noheader.csv": ":1: the header needs ts, device, point and value (missing ts, device",
        "empty.csv": ":1: the header needs ts, device, point and value",
        "twice.csv": ":1: the header names device twice (device, dev)",
        "huge.csv": ":3: not CSV (field larger than field limit (131072)); read no further",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        out = rules_test(cfg, tmp_path / name)
        assert out.returncode == 1, name
        assert f"{tmp_path / name}{expected[name]}" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    out = rules_test(cfg, tmp_path / "missing.csv")
    assert out.returncode == 1 and "No such file or directory" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_series_whose_steps_would_take_hours_is_refused_before_the_first_step(
    tmp_path: Path,
) -> None:
    """One row in seconds from 0 among epoch times, or a tail of years, was 17 billion steps
    of 0.1 s: hours of a technician's terminal, with nothing said."""
    cfg = lift_config(tmp_path)
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("ts,device,point,value\n0,lift-7,speed,0\n1764000000,lift-7,speed,1\n")
    one = tmp_path / "one.csv"
    one.write_text("ts,device,point,value\n10,lift-7,speed,0\n")
    cases = [
        (mixed, (), "(line 2 at 0 to line 3 at 1.764e+09)"),
        (one, ("--tail", "1e9"), "(line 2 at 10 to line 2 at 10 and --tail 1e+09 s)"),
        (one, ("--tail", "inf"), "spans inf s"),
    ]
    for series, extra, where in cases:
        out = rules_test(cfg, series, *extra)
        assert out.returncode == 1, out.stderr
        problem, summary = out.stderr.splitlines()
        assert problem.startswith(f"{series}: the series spans ") and where in problem, problem
        assert "more than a replay steps through (11.6 days in steps of 0.1 s)" in problem
        assert summary == "error: nothing replayed"
        assert out.stdout == ""


def test_a_value_or_time_no_double_holds_is_a_problem_of_its_row(tmp_path: Path) -> None:
    cfg = lift_config(tmp_path)
    bad = tmp_path / "bad.csv"
    digits = "9" * 4000  # an int Python reads, but no float compares with it
    bad.write_text(
        "ts,device,point,value\n"
        f"1,lift-7,speed,{digits}\n"
        "1e17,lift-7,speed,1\n"  # a clock where 0.1 s steps are lost: it stood still
        "2,lift-7,speed,1\n"
    )
    out = rules_test(cfg, bad)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.splitlines() == [
        f"{bad}:2: value '9999999999999999999999999999999999999999'... (4000 characters) "
        "is not a finite number",
        f"{bad}:3: ts '1e17' is not a time of the years 1 to 9999 in epoch seconds",
        "error: 2 rows cannot be replayed; nothing replayed",
    ]


def test_the_replay_ends_even_where_a_step_no_longer_moves_the_clock() -> None:
    """At 1e17 s a double cannot hold +0.1 s: the stepping loop once waited for ever."""
    code = (
        "from drivers.base import Quality, Reading\n"
        "from edge_agent.rules.series import Sample\n"
        "from edge_agent.rules.replay import replay\n"
        "rows = [Sample(i, Reading('d', 'p', 1.0, None, Quality.GOOD, 1e17 + 64 * i))"
        " for i in (1, 2)]\n"
        "print(replay([], rows, tail_s=64))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_a_replay_of_a_pipe_a_device_or_a_huge_file_is_refused_before_reading(
    tmp_path: Path,
) -> None:
    """A FIFO made the command wait for ever, /dev/zero filled the memory."""
    cfg = lift_config(tmp_path)
    fifo = tmp_path / "series.csv"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.csv"
    with huge.open("wb") as f:  # sparse: 257 MB that take no room
        f.truncate(257 * 1024 * 1024)
    cases = {
        fifo: "not a regular file (a pipe or a device): give a CSV file",
        Path("/dev/zero"): "not a regular file (a pipe or a device): give a CSV file",
        huge: "larger than 256 MB: replay a part of it",
    }
    for series, says in cases.items():
        out = rules_test(cfg, series)
        assert out.returncode == 1, (series, out.stderr)
        assert out.stderr.splitlines() == [f"{series}: {says}", "error: nothing replayed"]
