"""One agent config per simulated gateway, for the simulators as they run now (real ports).

Each config is built from the agent's typed config models (``AgentConfig``, ``ModbusDevice``
and friends), so it is checked by the same models the agent loads it with, and dumped as
YAML with only the keys set here: what is not set is the agent's default. A device is
built with its profile's points, and written as the file names it: its ``profile:`` and
the keys set beyond it (the loader fills in the points again). ``edge-agent check``
accepts every config written here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from drivers.modbus.config import ModbusConnection, ModbusDevice, ModbusPoint
from drivers.mqtt.config import MqttConnection, MqttDevice, MqttPoint
from drivers.opcua.config import OpcUaConnection, OpcUaDevice, OpcUaPoint
from drivers.simulated.fleet import SimFleet
from edge_agent.config.models import (
    AgentConfig,
    Central,
    DeviceConfig,
    DeviceProfile,
    GatewayConfig,
    HealthConfig,
    OutboxConfig,
)
from sim.plan import PlannedDevice, SimPlan, prefixed
from sim.simfile import SimGateway


def agent_config(plan: SimPlan, fleet: SimFleet, gateway: SimGateway) -> AgentConfig:
    """The agent config of one simulated gateway, against its running simulators. Each
    device has its profile's points; the profile's device and connection defaults are the
    loader's to fill in, as for any device that names a profile."""
    sim = plan.file
    built = list(_devices(plan, fleet, gateway))
    optional: dict[str, Any] = {}
    if sim.profile_dirs:
        base = plan.path.resolve().parent
        optional["profile_dirs"] = [base / d for d in sim.profile_dirs]
    if sim.rule_packs:
        optional["rule_packs"] = list(sim.rule_packs)
    central: dict[str, Any] = {"url": sim.central, "keepalive_s": 5}
    if sim.command_key is not None:  # relative to the sim file, as profile_dirs are
        central["command_key"] = plan.path.resolve().parent / sim.command_key
    cfg = AgentConfig(
        gateway=GatewayConfig(id=gateway.id, site=gateway.site or f"simulated by {plan.path.name}"),
        central=Central(**central),
        outbox=OutboxConfig(path=Path(f"{gateway.id}.outbox.db")),
        health=HealthConfig(interval_s=sim.health_s),
        devices=[device for device, _ in built],
        **optional,
    )
    profiles = {
        device.id: DeviceProfile(
            ref=d.source.profile, file=d.profile.file, rules=list(d.profile.profile.rules)
        )
        for device, d in built
    }
    # set as the loader sets it: device_profiles is not a key of the file
    return cfg.model_copy(update={"device_profiles": profiles})


def _devices(
    plan: SimPlan, fleet: SimFleet, gateway: SimGateway
) -> Iterator[tuple[DeviceConfig, PlannedDevice]]:
    sim = plan.file
    planned = [d for d in plan.devices if d.gateway == gateway.id]
    groups: dict[str, list[PlannedDevice]] = {}
    for d in planned:
        if d.spec.protocol == "mqtt" and d.source.topic is None:
            groups.setdefault(d.profile.profile.ref(), []).append(d)
    templated = set(list(groups)[:1])  # two {id} entries on one gateway would clash
    done: set[str] = set()
    for d in planned:
        spec, profile = d.spec, d.profile.profile
        own: dict[str, Any] = {} if d.source.poll_s is None else {"poll_s": d.source.poll_s}
        device: DeviceConfig
        if spec.protocol == "mqtt":
            # the simulator's publish period is its heartbeat, in wall seconds
            own["heartbeat_s"] = round(spec.publish_s / sim.speed, 3)
            group = profile.ref()
            if group in templated and d.source.topic is None:
                if group in done:
                    continue
                done.add(group)
                prefix = gateway.topic_prefix
                prefix_levels = len(prefix.strip("/").split("/")) if prefix else 0
                mqtt = MqttConnection(
                    url=sim.broker,
                    topic=prefixed(prefix, str(profile.connection["topic"])),
                    id_from=int(profile.connection["id_from"]) + prefix_levels,
                )
                device = MqttDevice(
                    id="{id}", mqtt=mqtt, points=profile.points_as(MqttPoint), **own
                )
            else:
                section: dict[str, object] = {"url": sim.broker, "topic": spec.topic}
                if "id_from" in profile.connection:  # a device of its own: not from the topic
                    section["id_from"] = None
                mqtt = MqttConnection.model_validate(section)
                device = MqttDevice(
                    id=spec.id, mqtt=mqtt, points=profile.points_as(MqttPoint), **own
                )
        elif spec.protocol == "modbus":
            if d.source.serial is not None:  # the agent is on the other end of the line
                modbus = ModbusConnection(
                    serial=d.source.agent_serial,
                    baudrate=spec.baudrate,
                    parity=spec.parity,
                    stopbits=spec.stopbits,
                    unit=spec.unit,
                )
            else:
                modbus = ModbusConnection.model_validate(fleet.endpoint(spec.id))
            device = ModbusDevice(
                id=spec.id, modbus=modbus, points=profile.points_as(ModbusPoint), **own
            )
        else:
            endpoint = str(fleet.endpoint(spec.id)["endpoint"])
            opcua = OpcUaConnection(endpoint=endpoint)
            device = OpcUaDevice(
                id=spec.id, opcua=opcua, points=profile.points_as(OpcUaPoint), **own
            )
        yield device, d


def config_yaml(cfg: AgentConfig) -> str:
    """The config as YAML, with only the keys that were set; a device built from a profile
    names it instead of listing the profile's points."""
    data = cfg.model_dump(mode="json", exclude_unset=True, exclude={"device_profiles", "devices"})
    devices = []
    for device in cfg.devices:
        entry = device.model_dump(mode="json", exclude_unset=True)
        profile = cfg.device_profiles.get(device.id)
        if profile is not None:
            del entry["points"]
            entry = {"id": entry.pop("id"), "profile": profile.ref, **entry}
        devices.append(entry)
    return yaml.safe_dump({**data, "devices": devices}, sort_keys=False, allow_unicode=True)


def agent_configs(plan: SimPlan, fleet: SimFleet) -> dict[str, str]:
    """One agent config (YAML text) per gateway, for the simulators as they now run."""
    out: dict[str, str] = {}
    for gw in plan.file.gateways:
        header = (
            f"# Written by `edge-agent sim` from {plan.path.name} for gateway {gw.id}: the\n"
            "# simulated devices as they are served now (ports change from run to run).\n"
        )
        out[gw.id] = header + config_yaml(agent_config(plan, fleet, gw))
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
