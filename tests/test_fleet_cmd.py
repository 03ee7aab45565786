"""``fleet cmd --where …`` against real agents: three live and one offline give three
results, one timeout and a non-zero exit, in about one timeout; every command is in the
ledger with its outcome. Run through the real entry points, against a real broker, a
real central service (its registry picks the gateways) and a simulated Modbus device."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.modbus.config import ModbusPoint
from tests.support import Agent, Broker, Central, ThreadedDevice, run_cli, wait_for

POINTS = [{"name": "smoke", "table": "input", "address": 0, "type": "float32", "unit": "%/m"}]
GATEWAYS = ("bench-1", "bench-2", "bench-3", "bench-4")
TIMEOUT_S = 3


@pytest.fixture
def detector() -> Iterator[ThreadedDevice]:
    device = ThreadedDevice([ModbusPoint.model_validate(p) for p in POINTS]).start()
    device.set("smoke", 0.5)
    yield device
    device.close()


def config(tmp: Path, gateway: str, broker_url: str, port: int, key: Path) -> str:
    return f"""\
gateway: {{id: {gateway}, site: bench, tags: {{district: north}}}}
central: {{url: '{broker_url}', keepalive_s: 2, command_key: '{key}'}}
outbox: {{path: '{tmp / "outbox.db"}', ack_timeout_s: 2}}
health: {{interval_s: 1}}
devices:
  - id: det-3
    modbus: {{host: 127.0.0.1, port: {port}, timeout_s: 0.5}}
    poll_s: 0.5
    points:
      - {json.dumps(POINTS[0])}
"""


def registry(db: Path) -> dict[str, bool]:
    out = run_cli("fleet", "gateways", "list", "--db", str(db), "--all", "--json")
    return {g["id"]: g["online"] for g in json.loads(out.stdout)} if out.returncode == 0 else {}


def test_cmd_where_three_live_one_offline(
    tmp_path: Path, mqtt_broker: Broker, detector: ThreadedDevice
) -> None:
    key = tmp_path / "center.key"
    assert run_cli("fleet", "keys", "init", "--key", str(key)).returncode == 0
    central = Central(tmp_path, mqtt_broker.url, key=key).start()
    agents = []
    for gw in GATEWAYS:
        work = tmp_path / gw
        work.mkdir()
        text = config(work, gw, mqtt_broker.url, detector.port, key.with_suffix(".pub"))
        agents.append(Agent(work, text).start())
    try:
        wait_for(
            lambda: registry(central.db) == dict.fromkeys(GATEWAYS, True),
            20,
            what="four gateways online in the registry",
        )
        agents[-1].stop()  # goodbye: offline in the registry, and nobody to answer
        wait_for(lambda: registry(central.db).get("bench-4") is False, 10, what="bench-4 offline")

        common = ("--db", str(central.db), "--broker", mqtt_broker.url, "--key", str(key))
        started = time.monotonic()
        out = run_cli(
            "fleet", "cmd", "--where", "site=bench", "ping", "--timeout", str(TIMEOUT_S),
            *common, "--json",
        )  # fmt: skip
        took = time.monotonic() - started
        assert out.returncode == 1, out.stderr
        results = {r["gateway"]: r for r in json.loads(out.stdout)}
        assert set(results) == set(GATEWAYS)
        assert {gw: r["result"] for gw, r in results.items()} == {
            "bench-1": "ok",
            "bench-2": "ok",
            "bench-3": "ok",
            "bench-4": "timeout",
        }
        assert set(results["bench-1"]["detail"]) == {
            "agent_version",
            "uptime_s",
            "outbox_depth",
            "ts",
        }
        assert took < TIMEOUT_S + 8, f"{took:.1f} s: the gateways were waited for one by one?"

        # the live ones only, and a read: every one answers, exit 0; a table for people
        detector.set("smoke", 1.25)
        live = run_cli(
            "fleet", "cmd", "--where", "site=bench,state=online", "read", "-d", "det-3",
            "-p", "smoke", *common,
        )  # fmt: skip
        assert live.returncode == 0, live.stdout + live.stderr
        assert "3 ok" in live.stderr
        for gw in GATEWAYS[:3]:
            assert gw in live.stdout

        # one gateway by name, refused: a point it does not have
        refused = run_cli("fleet", "cmd", "bench-2", "read", "-d", "det-3", "-p", "nope", *common)
        assert refused.returncode == 1 and "refused" in refused.stdout

        # the ledger: every command, to whom, by whom, how it ended
        ledger = json.loads(run_cli("fleet", "commands", "--db", str(central.db), "--json").stdout)
        assert len(ledger) == 4 + 3 + 1
        pings = {r["gateway"]: r["result"] for r in ledger if r["cmd"] == "ping"}
        assert pings == {gw: r["result"] for gw, r in results.items()}
        assert all(r["by"] == "operator" and r["sent"] > 0 for r in ledger)
        assert all(r["result"] is not None for r in ledger), [
            (r["gateway"], r["cmd"], r["result"]) for r in ledger
        ]
    finally:
        for agent in agents:
            agent.stop()
        central.stop()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("bench-1", "reboot"), "'reboot' is not an action"),
        (("ping",), "give GW ACTION"),
        (("bench-1", "ping", "--where", "site=x"), "with --where, give the action only"),
        (("bench-1", "read", "-d", "det-3"), "read needs --device and --point"),
        (("bench-1", "write", "-d", "det-3", "-p", "siren"), "write needs --value"),
        (("bench-1", "ping", "--value", "1"), "ping takes no --value"),
        (("--where", "colour=red", "ping"), "'colour' is not a gateway field"),
        (("bench-1", "ping", "--timeout", "nan"), "a finite number of seconds"),
        (("bench-1", "ping", "--timeout", "inf"), "a finite number of seconds"),
        (("bench-1", "ping", "--timeout", "0.05"), "0.1 to 3600 seconds, not 0.05"),
        (("bench-1", "ping", "--timeout", "5000"), "0.1 to 3600 seconds, not 5000"),
    ],
)
def test_cmd_usage_errors_exit_2_before_anything_is_sent(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    out = run_cli("fleet", "cmd", *args, "--db", str(tmp_path / "none.db"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert says in out.stderr


def test_cmd_gives_ctrl_c_back_when_its_commands_are_done(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    """Ctrl-C ends the commands outstanding; once they are done it must stop the process
    again (printing a table of ten thousand rows, a store that hangs), not be swallowed."""
    import signal  # noqa: PLC0415

    from typer.testing import CliRunner  # noqa: PLC0415

    from central.store import open_store  # noqa: PLC0415
    from cli.fleet import app  # noqa: PLC0415

    open_store(str(tmp_path / "central.db")).close()
    key = tmp_path / "center.key"
    assert run_cli("fleet", "keys", "init", "--key", str(key)).returncode == 0
    before = signal.getsignal(signal.SIGINT)
    args = ["cmd", "gw-nobody", "ping", "--timeout", "0.5", "--key", str(key)]
    args += ["--db", str(tmp_path / "central.db"), "--broker", mqtt_broker.url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "timeout" in result.output, result.output
    assert signal.getsignal(signal.SIGINT) is before
