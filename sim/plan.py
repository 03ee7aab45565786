"""A sim file resolved: every device's profile and scenario found and checked, and the
``SimSpec`` that ``drivers.simulated.fleet.SimFleet`` serves it from.

``load_sim()`` reports every problem at its line in the sim file (a profile that does not
exist, a scenario that moves a point the profile does not simulate, two devices on one
unit of a bus); ``device_timeline()`` runs one device's values without serving anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from drivers.base import DEVICE_ID, Value
from drivers.mqtt.config import MqttPoint, topic_levels
from drivers.simulated.dynamics import DeviceSim
from drivers.simulated.fleet import SimFleet, SimSpec
from drivers.simulated.mqtt_publisher import publishable
from drivers.simulated.scenario import (
    Scenario,
    ScenarioRun,
    Tick,
    scenario_file,
    scenario_names,
    timeline,
)
from edge_agent.config.problems import Loc, Problem, error_message, field_path, yaml_problems
from edge_agent.config.profiles import LoadedProfile, ProfileError, ProfileLibrary
from edge_agent.config.yaml_lines import Located, YamlSyntaxError, load_located
from sim.simfile import SimConfigError, SimDevice, SimFile, SimGateway, read_sim_file


@dataclass(frozen=True, slots=True)
class PlannedDevice:
    gateway: str
    spec: SimSpec
    profile: LoadedProfile
    source: SimDevice


@dataclass
class SimPlan:
    """A ``sim.yaml`` resolved: every device's spec, by gateway, in file order."""

    file: SimFile
    path: Path
    devices: list[PlannedDevice] = field(default_factory=list)

    @property
    def specs(self) -> list[SimSpec]:
        return [d.spec for d in self.devices]

    def fleet(self) -> SimFleet:
        f = self.file
        return SimFleet(self.specs, seed=f.seed, tick_s=f.tick_s, speed=f.speed)

    def device(self, device_id: str) -> PlannedDevice:
        for d in self.devices:
            if d.spec.id == device_id:
                return d
        known = ", ".join(d.spec.id for d in self.devices)
        raise KeyError(f"no simulated device {device_id!r} (there are: {known})")


def load_sim(
    path: Path,
    *,
    seed: int | None = None,
    broker: str | None = None,
    central: str | None = None,
    speed: float | None = None,
    command_key: Path | None = None,
) -> SimPlan:
    """Read and resolve a sim file; SimConfigError with every problem and its line."""
    name = str(path)
    overrides = {
        "seed": seed,
        "broker": broker,
        "central": central,
        "speed": speed,
        "command_key": command_key,
    }
    try:
        sim, located = read_sim_file(path, overrides)
    except SimConfigError as exc:
        if exc.located is None:  # not YAML, or not a mapping: nothing more to check
            raise
        more = _checks_of_valid_devices(path, exc.located)
        raise SimConfigError(sorted([*exc.problems, *more], key=lambda p: p.line)) from None
    library = ProfileLibrary([path.resolve().parent / d for d in sim.profile_dirs])
    plan = SimPlan(sim, path)
    problems: list[Problem] = []
    seen: dict[str, Loc] = {}
    buses: dict[tuple[object, ...], tuple[str, dict[int, Loc]]] = {}
    for g, gw in enumerate(sim.gateways):
        for i, dev in enumerate(gw.devices):
            here: Loc = ("gateways", g, "devices", i)

            def problem(key: str, message: str, here: Loc = here) -> None:
                problems.append(Problem.at(name, located, (*here, key), message))

            checked = _device_checks(dev, here, library, path, located)
            problems.extend(checked.problems)
            loaded, scenario = checked.profile, checked.scenario
            if loaded is None:
                continue
            units = range(dev.unit, dev.unit + dev.count)
            for device_id, unit in zip(dev.ids(), units, strict=True):
                if not DEVICE_ID.match(device_id) or "{" in device_id:
                    problem("id", f"{device_id!r} is not a device id (use {{n}} with count)")
                    break
                if device_id in seen:
                    problem(
                        "id", f"device {device_id!r} is already in {field_path(seen[device_id])}"
                    )
                seen.setdefault(device_id, here)
                try:
                    spec = _spec(sim, gw, dev, device_id, unit, loaded, scenario)
                except ValueError as exc:
                    problem("profile", str(exc))
                    break
                if spec.protocol == "modbus" and spec.bus[0] != "own":
                    kind, on_bus = buses.setdefault(spec.bus, (spec.framer, {}))
                    if unit in on_bus:
                        problem("unit", f"unit {unit} on this bus is {field_path(on_bus[unit])}'s")
                    elif kind != spec.framer:
                        problem("framer", f"the devices on this bus use framer {kind}")
                    on_bus.setdefault(unit, here)
                plan.devices.append(PlannedDevice(gw.id, spec, loaded, dev))
    if problems:
        raise SimConfigError(problems)
    return plan


@dataclass(frozen=True, slots=True)
class _DeviceCheck:
    profile: LoadedProfile | None
    """None: the device cannot be planned (its problems say why)."""
    scenario: Scenario | None
    problems: list[Problem]


def _device_checks(
    dev: SimDevice, here: Loc, library: ProfileLibrary, path: Path, located: Located
) -> _DeviceCheck:
    """What one device entry needs on its own: its profile, and a scenario that plays on it."""
    problems: list[Problem] = []

    def problem(key: str, message: str) -> None:
        problems.append(Problem.at(str(path), located, (*here, key), message))

    try:
        loaded = library.find(dev.profile)
    except ProfileError as exc:
        for p in exc.problems:
            problem("profile", p.message if p.file == "(profile)" else str(p))
        return _DeviceCheck(None, None, problems)
    scenario = None
    if dev.scenario is not None:
        try:
            scenario = _scenario(dev.scenario, path.resolve().parent)
        except (OSError, ValueError) as exc:
            problem("scenario", str(exc))
            return _DeviceCheck(None, None, problems)
        for message in scenario_fits(scenario, loaded):
            problem("scenario", message)
    if loaded.profile.protocol != "modbus" and (dev.serial or dev.framer != "tcp"):
        problem("framer", "framer and serial apply to Modbus devices")
    return _DeviceCheck(loaded, scenario, problems)


def _checks_of_valid_devices(path: Path, located: Located) -> list[Problem]:
    """For a sim file that did not validate as a whole: the checks of each device entry
    that is valid on its own, so that one misspelt key does not hide a wrong profile or
    scenario elsewhere in the file."""
    data = located.data
    dirs = data.get("profile_dirs")
    folders = [d for d in dirs if isinstance(d, str)] if isinstance(dirs, list) else []
    library = ProfileLibrary([path.resolve().parent / d for d in folders])
    gateways = data.get("gateways")
    problems: list[Problem] = []
    for g, gw in enumerate(gateways if isinstance(gateways, list) else []):
        devices = gw.get("devices") if isinstance(gw, dict) else None
        for i, raw in enumerate(devices if isinstance(devices, list) else []):
            try:
                dev = SimDevice.model_validate(raw)
            except ValidationError:
                continue  # its problems are among the schema's
            here: Loc = ("gateways", g, "devices", i)
            problems += _device_checks(dev, here, library, path, located).problems
    return problems


def _scenario(name: str, base: Path) -> Scenario:
    file = scenario_file(name)
    if not file.is_absolute() and name.endswith((".yaml", ".yml")):
        file = base / file
    if not file.exists():
        raise ValueError(f"no scenario {name!r}; shipped: {', '.join(scenario_names())}")
    try:
        located = load_located(file.read_text(encoding="utf-8"))
    except YamlSyntaxError as exc:
        raise ValueError("; ".join(str(p) for p in yaml_problems(exc, str(file)))) from None
    try:
        return Scenario.model_validate(located.data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc: Loc = tuple(err["loc"])
        raise ValueError(str(Problem.at(str(file), located, loc, error_message(err)))) from None


def scenario_fits(scenario: Scenario, loaded: LoadedProfile) -> list[str]:
    """Why a scenario cannot play on a profile's devices (empty if it can)."""
    profile = loaded.profile
    problems = []
    for point in sorted(scenario.points):
        sim = profile.simulation.get(point)
        if sim is None:
            problems.append(
                f"scenario {scenario.name} moves {point!r}, which {profile.ref()} does not simulate"
            )
        elif sim.expr is not None:
            problems.append(f"scenario {scenario.name} moves {point!r}, derived in {profile.ref()}")
    transport = scenario.transport_events
    if "silent" in transport and profile.protocol == "opcua":
        problems.append(f"scenario {scenario.name}: OPC-UA simulators cannot go silent")
    if "garbage" in transport and profile.protocol != "mqtt":
        problems.append(f"scenario {scenario.name}: only MQTT devices can send garbage")
    return problems


def _spec(
    sim: SimFile,
    gw: SimGateway,
    dev: SimDevice,
    device_id: str,
    unit: int,
    loaded: LoadedProfile,
    scenario: Scenario | None,
) -> SimSpec:
    profile = loaded.profile
    points = profile.points
    topic = None
    if profile.protocol == "mqtt":
        problem = publishable([p for p in points if isinstance(p, MqttPoint)])
        if problem is not None:
            raise ValueError(f"{profile.ref()}: {problem}")
        topic = dev.topic or prefixed(gw.topic_prefix, mqtt_topic(profile.connection, device_id))
    return SimSpec(
        id=device_id,
        protocol=profile.protocol,
        points=points,
        sims=profile.simulation,
        scenario=scenario,
        scenario_at=dev.scenario_at,
        host=sim.host,
        port=dev.port,
        unit=unit,
        framer="rtu" if dev.serial else dev.framer,
        serial=dev.serial,
        baudrate=dev.baudrate,
        parity=dev.parity,
        stopbits=dev.stopbits,
        broker=sim.broker if profile.protocol == "mqtt" else None,
        topic=topic,
        publish_s=dev.publish_s,
    )


def mqtt_topic(connection: dict[str, Any], device_id: str) -> str:
    """The topic a device publishes on: the profile's filter with its id filled in."""
    topic = connection.get("topic")
    if not isinstance(topic, str):
        raise ValueError("the profile names no mqtt topic; give the device a topic")
    levels = topic_levels(topic)
    index = connection.get("id_from")
    out = []
    for i, level in enumerate(levels):
        if i == index:
            out.append(device_id)
        elif level == "+":
            raise ValueError(f"{topic!r} has a + that does not name the device; give a topic")
        elif level != "#":
            out.append(level)
    return "/".join(out)


def prefixed(prefix: str | None, topic: str) -> str:
    """``topic`` under a gateway's ``topic_prefix`` (gateways that share a broker)."""
    return topic if not prefix else f"{prefix.strip('/')}/{topic}"


def device_timeline(plan: SimPlan, device_id: str, ticks: int) -> list[Tick]:
    """The values one device would show, tick by tick, without serving anything."""
    spec = plan.device(device_id).spec
    sim = DeviceSim(spec.id, spec.sims, seed=plan.file.seed, tick_s=plan.file.tick_s)
    run = ScenarioRun(spec.scenario, sim, start_s=spec.scenario_at) if spec.scenario else None
    return list(timeline(sim, run, ticks))


def tick_json(tick: Tick) -> dict[str, Value | dict[str, Value] | list[str]]:
    effects = []
    for e in tick.effects:
        if e.silent is not None:
            effects.append("silent" if e.silent else "speaks")
        if e.garbage is not None:
            effects.append("garbage: " + ", ".join(e.garbage.kinds))
    return {"t": tick.t, "silent": tick.silent, "values": tick.values, "effects": effects}
