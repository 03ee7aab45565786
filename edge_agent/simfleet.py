"""A bench of simulated gateways from one YAML file, and the agent configs to read them.

``sim.yaml`` lists gateways and, for each, devices by profile::

    seed: 7                              # same seed, same values: a run can be asserted on
    tick_s: 1                            # simulated seconds per step
    speed: 1                             # simulated seconds per wall second (10: ten times)
    host: 127.0.0.1                      # where Modbus and OPC-UA simulators listen
    broker: mqtt://127.0.0.1:1883        # where simulated wireless devices publish
    central: mqtt://127.0.0.1:1883       # what the written agent configs publish to
    rule_packs: [smoke, water, elevator] # put into the written agent configs
    gateways:
      - id: demo-0001
        site: Yan'an Rd underpass
        topic_prefix: demo-0001          # MQTT: publish under demo-0001/ (a shared broker)
        devices:
          - {id: wl-1, profile: acme/wl-300@1.0, scenario: flood}
          - {id: det-1, profile: acme/sd-2000@1.4, scenario: fire, scenario_at: 30, port: 15020}
          - {id: "ws-{n}", count: 3, profile: acme/ws-100@2.1, publish_s: 5}
          - {id: "rtu-{n}", count: 4, unit: 1, port: 15021, framer: rtu, profile: acme/sd-2000@1.4}
          - {id: wl-2, profile: acme/wl-300@1.0, serial: /dev/pts/3, agent_serial: /dev/pts/4}

Modbus devices on one port are units of one bus (an RS-485 gateway); ``serial`` serves RTU on
one end of a serial line (a ``socat`` pty pair) and the agent config gets ``agent_serial``.
``load_sim()`` checks the file (problems as ``file:line: field: message``, like agent
configs), resolves every profile and scenario, and gives the ``SimSpec``s that
``drivers.simulated.fleet.SimFleet`` runs. ``agent_configs()`` writes one agent config per
gateway against the running simulators (real ports), which ``edge-agent check`` accepts.
This lives in the agent package because it joins profiles (here) with simulators
(drivers); the drivers layer must not know about profiles or agent configs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from drivers.base import DEVICE_ID, Frozen, Value
from drivers.mqtt.config import MqttPoint, topic_levels
from drivers.simulated.fleet import SimFleet, SimSpec
from drivers.simulated.mqtt_publisher import publishable
from drivers.simulated.scenario import Scenario, ScenarioRun, Tick, scenario_file, timeline
from edge_agent.config.models import BrokerUrl
from edge_agent.config.problems import Problem, ProblemsError, field_path
from edge_agent.config.profiles import LoadedProfile, ProfileError, ProfileLibrary
from edge_agent.config.yaml_lines import YamlSyntaxError, line_of, load_located
from edge_agent.contract.topics import GATEWAY_ID

Loc = tuple[str | int, ...]


class SimDevice(Frozen):
    id: str = Field(description='device id; with count, a template with {n}: "ws-{n}"')
    profile: str = Field(description="vendor/model@firmware")
    count: int = Field(default=1, ge=1, le=10_000, description="devices made from this entry")
    port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Modbus/OPC-UA; 0: a free one. Modbus devices on one port share a server",
    )
    unit: int = Field(default=1, ge=1, le=247, description="Modbus; with count, the first")
    framer: Literal["tcp", "rtu"] = Field(default="tcp", description="Modbus: rtu = RTU over TCP")
    serial: str | None = Field(default=None, description="Modbus RTU: the simulator's serial port")
    agent_serial: str | None = Field(
        default=None, description="with serial: the agent's end of the line (a socat pty pair)"
    )
    baudrate: int = Field(default=19200, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    scenario: str | None = Field(default=None, description="a shipped scenario, or a .yaml file")
    scenario_at: float = Field(default=0, ge=0, description="seconds before the scenario starts")
    publish_s: float = Field(default=5.0, gt=0, description="MQTT: seconds between messages")
    topic: str | None = Field(default=None, description="MQTT: publish here instead")
    poll_s: float | None = Field(default=None, gt=0, description="in the written agent config")

    def ids(self) -> list[str]:
        if self.count == 1 and "{n}" not in self.id:
            return [self.id]
        return [self.id.replace("{n}", str(n)) for n in range(1, self.count + 1)]

    @model_validator(mode="after")
    def _serial(self) -> Self:
        if (self.serial is None) != (self.agent_serial is None):
            raise ValueError("serial and agent_serial go together: the two ends of one line")
        return self


class SimGateway(Frozen):
    id: str = Field(pattern=f"^{GATEWAY_ID.pattern}$")
    site: str = ""
    topic_prefix: str | None = Field(default=None, description="MQTT topics start with this")
    devices: list[SimDevice] = Field(min_length=1)


class SimFile(Frozen):
    seed: int = 0
    tick_s: float = Field(default=1.0, gt=0, le=60)
    speed: float = Field(default=1.0, gt=0, le=1000)
    host: str = "127.0.0.1"
    broker: str = "mqtt://127.0.0.1:1883"
    central: str = "mqtt://127.0.0.1:1883"
    rule_packs: list[str] = Field(default_factory=list)
    health_s: float = Field(default=5.0, gt=0)
    profile_dirs: list[Path] = Field(default_factory=list)
    gateways: list[SimGateway] = Field(min_length=1)

    @field_validator("broker", "central")
    @classmethod
    def _url(cls, v: str) -> str:
        BrokerUrl.parse(v)
        return v


class SimStartError(Exception):
    """A simulator could not start (a port in use, a serial line that refuses its settings)."""


class SimConfigError(ProblemsError):
    """The sim file cannot be run; ``problems`` lists each problem found, at its line."""


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
) -> SimPlan:
    """Read and resolve a sim file; SimConfigError with every problem and its line."""
    name = str(path)
    try:
        located = load_located(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimConfigError([Problem(name, 1, "(file)", str(exc))]) from None
    except YamlSyntaxError as exc:
        raise SimConfigError([Problem(name, exc.line, "(yaml)", exc.message)]) from None
    data = located.data
    if not isinstance(data, dict):
        raise SimConfigError([Problem(name, 1, "(file)", "must be a mapping of keys")])
    overrides = {"seed": seed, "broker": broker, "central": central, "speed": speed}
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        sim = SimFile.model_validate(data)
    except ValidationError as exc:
        invalid = []
        for err in exc.errors():
            loc: Loc = tuple(err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key (misspelt, or not valid here)"
            invalid.append(Problem(name, line_of(located.lines, loc), field_path(loc), msg))
        raise SimConfigError(invalid) from None
    library = ProfileLibrary([path.resolve().parent / d for d in sim.profile_dirs])
    plan = SimPlan(sim, path)
    problems: list[Problem] = []
    seen: dict[str, Loc] = {}
    buses: dict[tuple[object, ...], tuple[str, dict[int, Loc]]] = {}
    for g, gw in enumerate(sim.gateways):
        for i, dev in enumerate(gw.devices):
            here: Loc = ("gateways", g, "devices", i)

            def problem(key: str, message: str, here: Loc = here) -> None:
                loc = (*here, key)
                problems.append(
                    Problem(name, line_of(located.lines, loc), field_path(loc), message)
                )

            try:
                loaded = library.find(dev.profile)
            except ProfileError as exc:
                for p in exc.problems:
                    problem("profile", p.message if p.file == "(profile)" else str(p))
                continue
            scenario = None
            if dev.scenario is not None:
                try:
                    scenario = _scenario(dev.scenario, path.resolve().parent)
                except (OSError, ValueError) as exc:
                    problem("scenario", str(exc))
                    continue
                for message in scenario_fits(scenario, loaded):
                    problem("scenario", message)
            if loaded.profile.protocol != "modbus" and (dev.serial or dev.framer != "tcp"):
                problem("framer", "framer and serial apply to Modbus devices")
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


def _scenario(name: str, base: Path) -> Scenario:
    file = scenario_file(name)
    if not file.is_absolute() and name.endswith((".yaml", ".yml")):
        file = base / file
    if not file.exists():
        from drivers.simulated.scenario import scenario_names

        raise ValueError(f"no scenario {name!r}; shipped: {', '.join(scenario_names())}")
    located = load_located(file.read_text(encoding="utf-8"))
    try:
        return Scenario.model_validate(located.data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc: Loc = tuple(err["loc"])
        where = f"{file}:{line_of(located.lines, loc)}: {field_path(loc)}"
        raise ValueError(f"{where}: {str(err['msg']).removeprefix('Value error, ')}") from None


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
        topic = dev.topic or _prefixed(gw.topic_prefix, mqtt_topic(profile.connection, device_id))
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


def _prefixed(prefix: str | None, topic: str) -> str:
    return topic if not prefix else f"{prefix.strip('/')}/{topic}"


# --- agent configs ------------------------------------------------------------------------


def agent_configs(plan: SimPlan, fleet: SimFleet) -> dict[str, str]:
    """One agent config (YAML text) per gateway, for the simulators as they now run."""
    sim = plan.file
    out: dict[str, str] = {}
    for gw in sim.gateways:
        planned = [d for d in plan.devices if d.gateway == gw.id]
        entries: list[dict[str, Any]] = []
        groups: dict[str, list[PlannedDevice]] = {}
        for d in planned:
            if d.spec.protocol == "mqtt" and d.source.topic is None:
                groups.setdefault(d.profile.profile.ref(), []).append(d)
        templated = set(list(groups)[:1])  # two {id} entries on one gateway would clash
        done: set[str] = set()
        for d in planned:
            ref = d.source.profile
            entry: dict[str, Any] = {"id": d.spec.id, "profile": ref}
            protocol = d.spec.protocol
            endpoint = fleet.endpoint(d.spec.id)
            if protocol == "mqtt":
                group = d.profile.profile.ref()
                if group in templated:
                    if group in done:
                        continue
                    done.add(group)
                    connection = d.profile.profile.connection
                    prefix_levels = (
                        len(gw.topic_prefix.strip("/").split("/")) if gw.topic_prefix else 0
                    )
                    entry["id"] = "{id}"
                    entry["mqtt"] = {
                        "url": sim.broker,
                        "topic": _prefixed(gw.topic_prefix, str(connection["topic"])),
                        "id_from": int(connection["id_from"]) + prefix_levels,
                    }
                else:
                    entry["mqtt"] = {"url": sim.broker, "topic": d.spec.topic}
                    if "id_from" in d.profile.profile.connection:
                        entry["mqtt"]["id_from"] = None
                # the simulator's publish period is its heartbeat, in wall seconds
                entry["heartbeat_s"] = round(d.spec.publish_s / sim.speed, 3)
            elif protocol == "modbus":
                entry["modbus"] = endpoint
                if d.source.serial is not None:  # the agent is on the other end of the line
                    entry["modbus"] = {
                        "serial": d.source.agent_serial,
                        "baudrate": d.spec.baudrate,
                        "parity": d.spec.parity,
                        "stopbits": d.spec.stopbits,
                        "unit": d.spec.unit,
                    }
            else:
                entry["opcua"] = {"endpoint": endpoint["endpoint"]}
            if d.source.poll_s is not None:
                entry["poll_s"] = d.source.poll_s
            entries.append(entry)
        config: dict[str, Any] = {
            "gateway": {"id": gw.id, "site": gw.site or f"simulated by {plan.path.name}"},
            "central": {"url": sim.central, "keepalive_s": 5},
            "outbox": {"path": f"{gw.id}.outbox.db"},
            "health": {"interval_s": sim.health_s},
        }
        if sim.profile_dirs:
            base = plan.path.resolve().parent
            config["profile_dirs"] = [str(base / d) for d in sim.profile_dirs]
        if sim.rule_packs:
            config["rule_packs"] = list(sim.rule_packs)
        config["devices"] = entries
        header = (
            f"# Written by `edge-agent sim` from {plan.path.name} for gateway {gw.id}: the\n"
            "# simulated devices as they are served now (ports change from run to run).\n"
        )
        out[gw.id] = header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return out


def write_agent_configs(plan: SimPlan, fleet: SimFleet, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for gw, text in agent_configs(plan, fleet).items():
        target = folder / f"{gw}.yaml"
        tmp = target.with_suffix(".yaml.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)  # a reader never sees half a file
        written.append(target)
    return written


# --- running -------------------------------------------------------------------------------


async def serve(
    plan: SimPlan,
    stop: asyncio.Event,
    *,
    write_configs: Path | None = None,
    duration_s: float | None = None,
    announce: Any = print,
) -> SimFleet:
    """Run every simulated device until ``stop`` (or ``duration_s``); configs first."""
    fleet = plan.fleet()
    try:
        await fleet.start()
    except Exception as exc:  # pymodbus, asyncua, paho and termios each raise their own
        await fleet.stop()
        raise SimStartError(f"cannot start the simulators: {type(exc).__name__}: {exc}") from exc
    try:
        if write_configs is not None:
            paths = write_agent_configs(plan, fleet, write_configs)
            (write_configs / "endpoints.json").write_text(
                json.dumps({d.spec.id: fleet.endpoint(d.spec.id) for d in plan.devices}, indent=2)
            )
            announce(f"sim: agent configs in {', '.join(str(p) for p in paths)}")
        gateways = len(plan.file.gateways)
        announce(
            f"sim: {len(plan.devices)} device(s) of {gateways} gateway(s) running "
            f"(seed {plan.file.seed}, speed {plan.file.speed:g}); Ctrl-C stops"
        )
        ticks = None
        if duration_s is not None:
            ticks = max(1, round(duration_s * plan.file.speed / plan.file.tick_s))
        await fleet.run(stop, ticks=ticks)
    finally:
        await fleet.stop()
    return fleet


def device_timeline(plan: SimPlan, device_id: str, ticks: int) -> list[Tick]:
    """The values one device would show, tick by tick, without serving anything."""
    from drivers.simulated.dynamics import DeviceSim

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


def describe_plan(plan: SimPlan) -> list[dict[str, object]]:
    return [
        {
            "gateway": d.gateway,
            "device": d.spec.id,
            "profile": d.source.profile,
            "protocol": d.spec.protocol,
            "scenario": d.spec.scenario.name if d.spec.scenario else None,
            "scenario_at": d.spec.scenario_at,
        }
        for d in plan.devices
    ]


__all__: Sequence[str] = [
    "SimConfigError",
    "SimPlan",
    "agent_configs",
    "describe_plan",
    "device_timeline",
    "load_sim",
    "serve",
    "write_agent_configs",
]
