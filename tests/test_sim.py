"""Simulated devices and scenarios: value dynamics, scenario timelines (deterministic given
the seed), garbage the MQTT driver must survive, and sim files checked with their lines."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from drivers.base import DeviceUnavailable
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from drivers.mqtt.config import MqttDevice
from drivers.mqtt.driver import MqttDriver
from drivers.simulated.dynamics import DeviceSim
from drivers.simulated.fleet import SimFleet, SimSpec
from drivers.simulated.mqtt_publisher import SimulatedMqttDevice
from drivers.simulated.scenario import Effect, Garbage, Scenario, load_scenario, scenario_names
from drivers.simulation import PointSim
from edge_agent.config import load_config
from edge_agent.config.profiles import ProfileLibrary
from sim.configs import agent_config, write_agent_configs
from sim.plan import device_timeline, load_sim, scenario_fits, tick_json
from sim.simfile import SimConfigError
from tests.support import Broker, run_cli

DEMO = Path(__file__).resolve().parent.parent / "sim" / "demo-sim.yaml"


def sims(**specs: dict[str, Any]) -> dict[str, PointSim]:
    return {name: PointSim.model_validate(spec) for name, spec in specs.items()}


# --- dynamics ------------------------------------------------------------------------------


def test_values_drift_and_are_noisy_but_stay_in_range_and_derived_flags_agree() -> None:
    sim = DeviceSim(
        "tank-1",
        sims(
            level={"value": 50.0, "noise": 5, "drift": 2, "revert_s": 100, "min": 0, "max": 60},
            count={"value": 7},
            high={"expr": "level >= 55"},
            name={"value": "T1"},
        ),
        seed=3,
    )
    outputs = [sim.step() for _ in range(500)]
    levels = [o["level"] for o in outputs]
    assert all(0 <= v <= 60 for v in levels) and len(set(levels)) > 400
    assert 45 < sum(levels) / len(levels) < 55  # pulled back to its rest value
    assert all(o["high"] == (o["level"] >= 55) for o in outputs)
    assert {o["count"] for o in outputs} == {7} and {o["name"] for o in outputs} == {"T1"}
    assert all(isinstance(o["count"], int) for o in outputs)


def test_ramps_and_sets_move_the_process_value() -> None:
    sim = DeviceSim("d", sims(depth={"value": 0.0, "digits": 1}, flag={"value": False}))
    sim.ramp("depth", 10.0, over_s=10)
    assert [sim.step()["depth"] for _ in range(12)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10]
    sim.set("flag", True)
    assert sim.step()["flag"] is True
    sim.reset("depth")
    assert sim.step()["depth"] == 0.0
    with pytest.raises(ValueError, match="only numbers ramp"):
        sim.ramp("flag", 1, 5)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({}, "give value"),
        ({"expr": "a > 1", "value": 1}, "takes no value"),
        ({"value": True, "noise": 1}, "apply to numbers"),
        ({"value": 1, "min": 2, "max": 1}, "min is above max"),
        ({"expr": "a >"}, "syntax error"),
        ({"expr": "open('x')"}, "unknown function 'open'"),
    ],
)
def test_point_simulation_mistakes(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        PointSim.model_validate(spec)


# --- scenarios -----------------------------------------------------------------------------


def test_a_scenario_run_is_deterministic_given_the_seed() -> None:
    plan = load_sim(DEMO)
    first = [tick_json(t) for t in device_timeline(plan, "det-1", 400)]
    again = [tick_json(t) for t in device_timeline(load_sim(DEMO), "det-1", 400)]
    other = [tick_json(t) for t in device_timeline(load_sim(DEMO, seed=8), "det-1", 400)]
    assert first == again
    assert first != other
    # the scripted events are the seed's too: both runs raise the alarm at the same tick
    alarm = [t["t"] for t in first if t["values"]["smoke_alarm"]]  # type: ignore[index]
    assert alarm and alarm == [t["t"] for t in again if t["values"]["smoke_alarm"]]  # type: ignore[index]


def test_the_same_timeline_from_a_fresh_process() -> None:
    args = ("edge-agent", "sim", "timeline", str(DEMO), "-d", "lift-1", "--ticks", "80", "--json")
    one, two = run_cli(*args), run_cli(*args)
    assert one.returncode == 0, one.stderr
    assert one.stdout == two.stdout
    local = [tick_json(t) for t in device_timeline(load_sim(DEMO), "lift-1", 80)]
    assert json.loads(one.stdout) == json.loads(json.dumps(local))


def first_tick(ticks: list[Any], point: str, test: Any) -> float:
    return next(t.t for t in ticks if test(t.values[point]))


def test_fire_crosses_pre_alarm_then_alarm_then_heat() -> None:
    ticks = device_timeline(load_sim(DEMO), "det-1", 600)
    pre, alarm = first_tick(ticks, "pre_alarm", bool), first_tick(ticks, "smoke_alarm", bool)
    heat = first_tick(ticks, "heat_alarm", bool)
    assert 65 <= pre <= 75 and 95 <= alarm <= 101 and 175 <= heat <= 190
    assert max(t.values["obscuration"] for t in ticks) == pytest.approx(4.5, abs=0.1)
    end = ticks[-1].values  # ventilated: back below the pre-alarm band
    assert end["obscuration"] < 0.3 and not end["smoke_alarm"] and not end["heat_alarm"]


def test_flood_passes_15_and_25_cm_then_drains() -> None:
    ticks = device_timeline(load_sim(DEMO), "wl-1", 1100)
    warn, close = (
        first_tick(ticks, "depth", lambda v: v >= 15),
        first_tick(ticks, "depth", lambda v: v >= 25),
    )
    assert 280 <= warn <= 300 and 480 <= close <= 500
    at_close = next(t for t in ticks if t.t == close)
    assert at_close.values["float_switch"] and at_close.values["pump_running"]
    peak = max(t.values["depth"] for t in ticks)
    assert 31 <= peak <= 33
    assert ticks[-1].values["depth"] < 1 and ticks[-1].values["pump_running"] is False


def test_elevator_entrapment_stops_outside_the_zone_with_a_person_inside() -> None:
    ticks = device_timeline(load_sim(DEMO), "lift-1", 300)
    trapped = [
        t.t
        for t in ticks
        if t.values["person_in_car"]
        and not t.values["running"]
        and not t.values["door_open"]
        and not t.values["door_zone"]
    ]
    assert trapped[0] == 24 and trapped[-1] == 239  # 215 s, until the car is levelled
    at = {t.t: t.values for t in ticks}
    assert at[19.0]["running"] and at[19.0]["speed"] > 1  # it moved first
    assert at[30.0]["fault_code"] == 6 and at[30.0]["floor"] == 3
    assert at[42.0]["alarm_button"] and not at[46.0]["alarm_button"]
    assert at[265.0]["person_in_car"] is False  # rescued


def test_silence_and_garbage_are_effects_for_the_transport(tmp_path: Path) -> None:
    sim_file = tmp_path / "sim.yaml"
    sim_file.write_text(
        "gateways:\n  - id: gw\n    devices:\n"
        "      - {id: ws-1, profile: acme/ws-100@2.1, scenario: garbage}\n"
        "      - {id: det-1, profile: acme/sd-2000@1.4, scenario: silent, scenario_at: 100}\n"
    )
    plan = load_sim(sim_file)
    garbage = [(t.t, t.effects) for t in device_timeline(plan, "ws-1", 130) if t.effects]
    assert [t for t, _ in garbage] == [10, 30, 60, 130]  # and again after loop_s 120
    assert garbage[0][1][0].garbage is not None
    assert garbage[0][1][0].garbage.kinds == [
        "not_json",
        "truncated",
        "wrong_type",
        "empty",
        "binary",
    ]
    ticks = device_timeline(plan, "det-1", 400)
    silent = [t.t for t in ticks if t.silent]
    assert (silent[0], silent[-1], len(silent)) == (160, 339, 180)


def test_every_shipped_scenario_loads_and_fits_some_profile() -> None:
    profiles, _ = ProfileLibrary().load_all()
    for name in scenario_names():
        scenario = load_scenario(name)
        assert any(not scenario_fits(scenario, lp) for lp in profiles), name


class Recorder:
    """Stands where the paho publisher would: keeps what a simulated device publishes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.sent.append((topic, payload))


def test_simulated_garbage_is_what_the_driver_counts_and_good_messages_still_read() -> None:
    profile = ProfileLibrary().find("acme/ws-100@2.1").profile
    points = profile.points
    recorder = Recorder()
    device = SimulatedMqttDevice("ws-1", points, "ws100/ws-1/up", recorder, publish_s=5)  # type: ignore[arg-type]
    sim = DeviceSim("ws-1", profile.simulation)
    kinds = ["not_json", "truncated", "oversized", "wrong_type", "empty", "binary"]
    device.apply(1, sim.step(), [Effect(garbage=Garbage(kinds=kinds))])  # type: ignore[arg-type]
    device.apply(2, sim.step(), [])  # not due: no message
    device.apply(6, sim.step(), [])
    assert len(recorder.sent) == 8 and device.garbage_sent == 6 and device.sent == 2
    driver = MqttDriver(
        MqttDevice.model_validate(
            {
                "id": "{id}",
                "mqtt": {"url": "mqtt://127.0.0.1:1", **profile.connection},
                "points": profile.points,
            }
        )
    )
    for topic, payload in recorder.sent:
        driver.receive(topic, payload)
    health = driver.device_health()["ws-1"]
    # garbage before ws-1's first readable message makes no device: the entry counts it
    counters = ["malformed", "oversized", "unexpected"]
    assert [health[k] + driver.stats.stray[k] for k in counters] == [4, 1, 1]  # type: ignore[operator]
    good = [r for r in driver.collect() if r.quality.value == "good"]
    assert {r.point for r in good} == {p.name for p in points}
    assert len(good) == 2 * len(points)


# --- sim files -----------------------------------------------------------------------------


def test_sim_file_mistakes_are_reported_with_their_line(tmp_path: Path) -> None:
    f = tmp_path / "sim.yaml"
    f.write_text(
        "seed: 1\n"
        "gateways:\n"
        "  - id: gw-1\n"
        "    devices:\n"
        "      - {id: det-1, profile: acme/sd-9000@1.0}\n"
        "      - {id: det-2, profile: acme/sd-2000@1.4, scenario: flood}\n"
        "      - {id: det-3, profile: acme/sd-2000@1.4, scenario: garbage}\n"
        "      - {id: det-3, profile: acme/sd-2000@1.4, scenario: nope}\n"
        "      - {id: ps-1, profile: acme/ps-plc@1.0, scenario: silent}\n"
        "      - {id: lift-1, profile: acme/lift-monitor@2.3, scenario: fire}\n"
        "      - {id: det-4, profile: acme/sd-2000@1.4, scenario: fire, pots: 1}\n"
    )
    with pytest.raises(SimConfigError) as info:
        load_sim(f)
    got = [(p.line, p.field, p.message) for p in info.value.problems]
    # one round: the misspelt key and the unknown scenario name, together
    assert (11, "gateways[0].devices[6].pots", "unknown key (misspelt, or not valid here)") in got
    assert any(
        ln == 8 and fd.endswith("scenario") and "no scenario 'nope'" in m for ln, fd, m in got
    )
    f.write_text(f.read_text().replace(", pots: 1", ""))
    with pytest.raises(SimConfigError) as info:
        load_sim(f)
    got = [(p.line, p.field, p.message) for p in info.value.problems]
    expect = {
        (5, "profile"): "no profile acme/sd-9000",
        (6, "scenario"): "moves 'depth', which acme/sd-2000@1.4 does not simulate",
        (7, "scenario"): "only MQTT devices can send garbage",
        (8, "scenario"): "no scenario 'nope'",
        (9, "scenario"): "OPC-UA simulators cannot go silent",
        (10, "scenario"): "moves 'obscuration', which acme/lift-monitor@2.3 does not simulate",
    }
    for (line, key), needle in expect.items():
        assert any(ln == line and fd.endswith(key) and needle in msg for ln, fd, msg in got), (
            line,
            got,
        )
    cli = run_cli("edge-agent", "sim", "run", str(f))
    assert cli.returncode == 2 and f"{f}:5: gateways[0].devices[0].profile: " in cli.stderr


def test_count_makes_numbered_devices_and_mqtt_topics_carry_the_id(tmp_path: Path) -> None:
    f = tmp_path / "sim.yaml"
    f.write_text(
        "gateways:\n  - id: gw-1\n    topic_prefix: site-1\n    devices:\n"
        '      - {id: "ws-{n}", count: 3, profile: acme/ws-100@2.1}\n'
    )
    plan = load_sim(f)
    assert [d.spec.id for d in plan.devices] == ["ws-1", "ws-2", "ws-3"]
    assert plan.devices[1].spec.topic == "site-1/ws100/ws-2/up"


async def test_a_silent_modbus_unit_times_out_and_answers_again() -> None:
    profile = ProfileLibrary().find("acme/sd-2000@1.4").profile
    silent = Scenario.model_validate(
        {
            "name": "s",
            "title": "s",
            "events": [{"at": 2, "silent": True}, {"at": 4, "silent": False}],
        }
    )
    spec = SimSpec("det-1", "modbus", profile.points, profile.simulation, silent)
    fleet = SimFleet([spec], seed=1)
    await fleet.start()  # tick 1
    endpoint = fleet.endpoint("det-1")
    device = ModbusDevice.model_validate(
        {
            "id": "det-1",
            "modbus": {**endpoint, "timeout_s": 0.3, "retries": 0},
            "points": profile.points,
        }
    )
    driver = ModbusDriver(device)
    try:
        first = {r.point: r.value for r in await driver.read()}
        assert first["model"] == "SD20" and first["obscuration"] == pytest.approx(
            fleet.values("det-1")["obscuration"], rel=1e-6
        )
        await fleet.tick()  # tick 2: silent
        with pytest.raises(DeviceUnavailable, match="timeout"):
            await driver.read()
        await fleet.tick()
        await fleet.tick()  # tick 4: answering again
        again: dict[str, Any] = {}
        for _ in range(50):  # the driver backs a timed-out unit off for a while
            try:
                again = {r.point: r.value for r in await driver.read()}
                break
            except DeviceUnavailable:
                await asyncio.sleep(0.1)
        assert again["supply_voltage"] == pytest.approx(
            fleet.values("det-1")["supply_voltage"], abs=0.006
        )
    finally:
        await driver.aclose()
        await fleet.stop()


async def test_a_written_agent_config_loads_back_into_the_config_it_was_built_from(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    f = tmp_path / "sim.yaml"
    f.write_text(
        f"broker: {mqtt_broker.url}\ncentral: {mqtt_broker.url}\nrule_packs: [smoke]\n"
        "gateways:\n  - id: gw-1\n    topic_prefix: site-1\n    devices:\n"
        "      - {id: det-1, profile: acme/sd-2000@1.4, poll_s: 2}\n"
        '      - {id: "rtu-{n}", count: 2, unit: 5, port: 0, profile: acme/sd-2000@1.4}\n'
        '      - {id: "ws-{n}", count: 2, profile: acme/ws-100@2.1, publish_s: 2}\n'
        "  - id: gw-2\n    devices:\n"
        "      - {id: ws-9, profile: acme/ws-100@2.1, topic: own/ws-9}\n"
    )
    plan = load_sim(f)
    fleet = plan.fleet()
    await fleet.start()
    try:
        built = [agent_config(plan, fleet, gw) for gw in plan.file.gateways]
        written = write_agent_configs(plan, fleet, tmp_path / "configs")
    finally:
        await fleet.stop()
    assert [p.name for p in written] == ["gw-1.yaml", "gw-2.yaml"]
    assert all("points:" not in p.read_text() for p in written)  # the profile gives them
    gw1, gw2 = (load_config(p).config for p in written)
    assert [d.id for d in gw1.devices] == ["det-1", "rtu-1", "rtu-2", "{id}"]
    for cfg, made in ((gw1, built[0]), (gw2, built[1])):
        assert cfg.devices == made.devices  # points, sections and own keys, as built
        assert {k: p.ref for k, p in cfg.device_profiles.items()} == {
            k: p.ref for k, p in made.device_profiles.items()
        }
    assert gw1.central.url == mqtt_broker.url and gw1.central.keepalive_s == 5
    assert gw1.outbox.path == tmp_path / "configs" / "gw-1.outbox.db"
    assert gw1.rule_packs == ["smoke"] and gw1.gateway.site == "simulated by sim.yaml"
    assert gw1.devices[0].poll_s == 2 and gw1.devices[1].poll_s == 1  # not set: the default
    templated: Any = gw1.devices[3]
    assert (templated.mqtt.topic, templated.mqtt.id_from) == ("site-1/ws100/+/up", 2)
    (ws9,) = gw2.devices
    assert isinstance(ws9, MqttDevice) and not ws9.templated
    assert ws9.mqtt.topic == "own/ws-9" and ws9.mqtt.id_from is None


def test_the_agent_and_its_config_loading_do_not_import_the_simulators(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text(
        "gateway: {id: gw-1}\ndevices:\n"
        "  - {id: det-1, profile: acme/sd-2000@1.4, modbus: {host: 127.0.0.1}}\n"
    )
    code = (
        "import sys\n"
        "import cli.agent, edge_agent.app, edge_agent.config\n"
        "from edge_agent.config import load_config\n"
        f"cfg = load_config(__import__('pathlib').Path({str(f)!r})).config\n"
        "assert cfg.device_profiles['det-1'].ref == 'acme/sd-2000@1.4'\n"
        "print(sorted(m for m in sys.modules if m == 'sim' or m.startswith(('sim.', "
        "'drivers.simulated'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


async def test_a_wireless_device_with_its_own_topic_is_written_beside_its_profiles_template(
    tmp_path: Path, mqtt_broker: Broker
) -> None:
    # the templated entry covers the topic-less detectors only: one that publishes on a
    # topic of its own must get an entry of its own, or no agent reads it
    f = tmp_path / "sim.yaml"
    f.write_text(
        f"broker: {mqtt_broker.url}\ncentral: {mqtt_broker.url}\n"
        "gateways:\n  - id: gw-1\n    devices:\n"
        '      - {id: "ws-{n}", count: 2, profile: acme/ws-100@2.1}\n'
        "      - {id: ws-own, profile: acme/ws-100@2.1, topic: own/ws-own}\n"
    )
    plan = load_sim(f)
    fleet = plan.fleet()
    await fleet.start()
    try:
        (written,) = write_agent_configs(plan, fleet, tmp_path / "configs")
    finally:
        await fleet.stop()
    devices = load_config(written).config.devices
    assert [d.id for d in devices] == ["{id}", "ws-own"]
    own: Any = devices[1]
    assert own.mqtt.topic == "own/ws-own" and not own.templated


def test_the_centers_public_key_goes_into_every_written_config(tmp_path: Path) -> None:
    """From the sim file (relative to it) or from --command-key (relative to the working
    directory): without it the gateways refuse every command of the center."""
    f = tmp_path / "sim.yaml"
    f.write_text(
        "command_key: keys/center.pub\n"
        "gateways:\n  - id: gw-1\n    devices:\n      - {id: ws-1, profile: acme/ws-100@2.1}\n"
    )
    plan = load_sim(f)
    (gw,) = plan.file.gateways
    assert agent_config(plan, plan.fleet(), gw).central.command_key == tmp_path / "keys/center.pub"
    other = tmp_path / "other.pub"
    plan = load_sim(f, command_key=other)
    assert agent_config(plan, plan.fleet(), gw).central.command_key == other
    # a key file that is not there is a usage error, before anything is served
    out = run_cli("edge-agent", "sim", "run", str(f), "--command-key", str(tmp_path / "none.pub"))
    assert out.returncode == 2 and "--command-key" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
