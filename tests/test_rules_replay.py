"""`edge-agent rules test --replay`: recorded series through the shipped packs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

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
    assert out.returncode == 1 and f"{bad}:2: ts 'soon' is not a number" in out.stderr
    s = Series()
    s.trip()
    out = run_cli(
        "edge-agent", "rules", "test", "-c", str(cfg), "--replay", str(s.write(tmp_path / "ok.csv"))
    )
    assert out.returncode == 0 and out.stdout.strip() == "no alarms"
