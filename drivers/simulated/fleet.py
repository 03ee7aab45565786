"""Many simulated devices at once, each over its real protocol, moved by one clock.

``SimFleet`` takes fully resolved ``SimSpec``s (points, dynamics, scenario, where to
serve) and runs them: a pymodbus server per Modbus device, an asyncua server per OPC-UA
device, and MQTT publishers sharing one connection per broker. Every ``tick_s`` of
simulated time it applies each device's due scenario events, steps its values and hands
them to its transport; ``speed`` runs simulated time faster than the wall clock (a
ten-minute flood in one minute at ``speed: 10``).

It knows nothing of profiles or agent configs: the ``sim`` package resolves a
``sim.yaml`` into specs and writes the matching agent configs. A failure of one device
(a value its register cannot hold, a server that will not restart) is logged once and
never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from drivers.base import Value
from drivers.modbus.config import ModbusPoint
from drivers.mqtt.config import MqttPoint
from drivers.opcua.config import NodeRef, OpcUaPoint
from drivers.simulation import PointSim

from .dynamics import DeviceSim
from .modbus_bus import SimulatedModbusBus, SimulatedUnit
from .mqtt_publisher import MqttPublisher, SimulatedMqttDevice
from .scenario import Effect, Scenario, ScenarioRun

if TYPE_CHECKING:
    from .opcua_server import SimNode, SimulatedPumpStation

log = logging.getLogger(__name__)

Protocol = Literal["modbus", "opcua", "mqtt"]


@dataclass(frozen=True)
class SimSpec:
    """One simulated device, resolved: what it serves, how its values move, where."""

    id: str
    protocol: Protocol
    points: Sequence[ModbusPoint | OpcUaPoint | MqttPoint]
    sims: Mapping[str, PointSim]
    scenario: Scenario | None = None
    scenario_at: float = 0.0
    host: str = "127.0.0.1"
    port: int = 0
    unit: int = 1
    framer: Literal["tcp", "rtu"] = "tcp"
    serial: str | None = None
    baudrate: int = 19200
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    broker: str | None = None
    topic: str | None = None
    publish_s: float = 5.0

    @property
    def bus(self) -> tuple[object, ...]:
        """Modbus devices with the same bus share one server: a serial line, or a TCP port
        (an RS-485 gateway); a device on port 0 gets a server of its own."""
        if self.serial is not None:
            return ("serial", self.serial)
        if self.port:
            return ("tcp", self.host, self.port)
        return ("own", self.id)


@dataclass(frozen=True)
class _OpcUa:
    """An OPC-UA simulator, and which of its variables each point is."""

    station: SimulatedPumpStation
    keys: Mapping[str, str]


@dataclass
class _Running:
    spec: SimSpec
    sim: DeviceSim
    run: ScenarioRun | None
    transport: SimulatedUnit | SimulatedMqttDevice | _OpcUa
    failed: set[str] = field(default_factory=set)


class SimFleet:
    def __init__(
        self, specs: Sequence[SimSpec], *, seed: int = 0, tick_s: float = 1.0, speed: float = 1.0
    ) -> None:
        self.specs = list(specs)
        self.seed = seed
        self.tick_s = tick_s
        self.speed = speed
        self.ticks = 0
        self._devices: dict[str, _Running] = {}
        self._publishers: dict[str, MqttPublisher] = {}
        self._buses: dict[tuple[object, ...], SimulatedModbusBus] = {}

    async def start(self) -> None:
        await self._start_buses()
        for spec in self.specs:
            sim = DeviceSim(spec.id, spec.sims, seed=self.seed, tick_s=self.tick_s)
            run = (
                ScenarioRun(spec.scenario, sim, start_s=spec.scenario_at)
                if spec.scenario is not None
                else None
            )
            transport = await self._serve(spec, sim)
            self._devices[spec.id] = _Running(spec, sim, run, transport)
        await self.tick()  # every device holds values before anyone reads it

    async def stop(self) -> None:
        for bus in self._buses.values():
            with suppress(Exception):
                await bus.stop()
        for dev in self._devices.values():
            if isinstance(dev.transport, _OpcUa):
                with suppress(Exception):
                    await dev.transport.station.stop()
        for publisher in self._publishers.values():
            publisher.stop()
        self._devices.clear()
        self._publishers.clear()
        self._buses.clear()

    def endpoint(self, device: str) -> dict[str, object]:
        """Where a device is served, once started: what an agent config needs."""
        dev = self._devices[device]
        spec, transport = dev.spec, dev.transport
        if isinstance(transport, SimulatedUnit):
            if spec.serial is not None:
                return {"serial": spec.serial, "unit": spec.unit}
            out: dict[str, object] = {"host": spec.host, "port": transport.bus.port}
            if spec.framer == "rtu":
                out["framer"] = "rtu"
            return {**out, "unit": spec.unit}
        if isinstance(transport, _OpcUa):
            return {"endpoint": transport.station.endpoint}
        return {"url": spec.broker, "topic": spec.topic}

    async def run(self, stop: asyncio.Event, *, ticks: int | None = None) -> None:
        """Tick until ``stop`` is set (or ``ticks`` ticks), keeping to the wall clock."""
        loop = asyncio.get_running_loop()
        period = self.tick_s / self.speed
        next_at = loop.time() + period
        done = 0
        while not stop.is_set() and (ticks is None or done < ticks):
            with suppress(TimeoutError):
                # asyncio.timeout, not wait_for: before Python 3.12 wait_for can drop a
                # cancellation that meets the stop
                async with asyncio.timeout_at(next_at):
                    await stop.wait()
            if stop.is_set():
                break
            await self.tick()
            done += 1
            next_at = max(next_at + period, loop.time())  # a slow tick is not caught up

    async def tick(self) -> None:
        self.ticks += 1
        for dev in self._devices.values():
            effects = dev.run.advance() if dev.run is not None else []
            values = dev.sim.step()
            try:
                await self._apply(dev, values, effects)
            except Exception as exc:
                self._once(dev, "apply", f"{type(exc).__name__}: {exc}")

    def values(self, device: str) -> dict[str, Value]:
        """The values a device showed at the last tick."""
        return dict(self._devices[device].sim.outputs)

    # --- transports ------------------------------------------------------------------------

    async def _start_buses(self) -> None:
        """One Modbus server per bus, serving every unit on it."""
        groups: dict[tuple[object, ...], list[SimSpec]] = {}
        for spec in self.specs:
            if spec.protocol == "modbus":
                groups.setdefault(spec.bus, []).append(spec)
        for key, specs in groups.items():
            units: dict[int, list[ModbusPoint]] = {}
            for spec in specs:
                if spec.unit in units:
                    raise ValueError(f"{spec.id}: unit {spec.unit} is already on this bus")
                units[spec.unit] = [p for p in spec.points if isinstance(p, ModbusPoint)]
            first = specs[0]
            bus = SimulatedModbusBus(
                units,
                host=first.host,
                port=first.port,
                framer=first.framer,
                serial=first.serial,
                baudrate=first.baudrate,
                parity=first.parity,
                stopbits=first.stopbits,
            )
            await bus.start()
            self._buses[key] = bus

    async def _serve(
        self, spec: SimSpec, sim: DeviceSim
    ) -> SimulatedUnit | SimulatedMqttDevice | _OpcUa:
        if spec.protocol == "modbus":
            return self._buses[spec.bus].unit(spec.unit)
        if spec.protocol == "opcua":
            # asyncua loads only when a device serves OPC-UA: a Modbus and MQTT fleet skips it
            from .opcua_server import SimulatedPumpStation  # noqa: PLC0415

            points_ua = [p for p in spec.points if isinstance(p, OpcUaPoint)]
            nodes, keys = opcua_nodes(points_ua, spec.sims)
            # asyncua cannot report a port the OS picked: pick a free one first
            port = spec.port or _free_port(spec.host)
            station = SimulatedPumpStation(nodes, host=spec.host, port=port)
            await station.start()
            return _OpcUa(station, keys)
        if spec.broker is None or spec.topic is None:
            raise ValueError(f"{spec.id}: an MQTT device needs broker and topic")
        publisher = self._publishers.get(spec.broker)
        if publisher is None:
            publisher = MqttPublisher(spec.broker)
            await asyncio.to_thread(publisher.start)
            self._publishers[spec.broker] = publisher
        points_mqtt = [p for p in spec.points if isinstance(p, MqttPoint)]
        return SimulatedMqttDevice(
            spec.id, points_mqtt, spec.topic, publisher, publish_s=spec.publish_s
        )

    async def _apply(self, dev: _Running, values: dict[str, Value], effects: list[Effect]) -> None:
        transport = dev.transport
        if isinstance(transport, SimulatedMqttDevice):
            transport.apply(dev.sim.t, values, effects)
            return
        if isinstance(transport, SimulatedUnit):
            for effect in effects:
                if effect.silent is not None:
                    transport.silent = effect.silent  # requests arrive, no answer goes out
                    what = "silent" if effect.silent else "answering again"
                    log.info("sim %s: %s", dev.spec.id, what)
            for name, value in values.items():
                if name in transport.points:
                    try:
                        await transport.set(name, value)
                    except ValueError as exc:
                        self._once(dev, name, str(exc))
            return
        for name, value in values.items():
            if name in transport.keys:
                try:
                    await transport.station.set(transport.keys[name], value)
                except Exception as exc:
                    self._once(dev, name, f"{type(exc).__name__}: {exc}")

    def _once(self, dev: _Running, key: str, message: str) -> None:
        if key not in dev.failed:
            dev.failed.add(key)
            log.warning("sim %s: %s (further failures are not logged)", dev.spec.id, message)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_VARIANTS = {bool: "Boolean", int: "Int32", float: "Double", str: "String"}


def opcua_nodes(
    points: Sequence[OpcUaPoint], sims: Mapping[str, PointSim]
) -> tuple[list[SimNode], dict[str, str]]:
    """The variables an OPC-UA simulator serves for these points, and point → variable key.

    A point whose node id is one of the stock pump station's keeps that variable's name and
    type; another becomes ``<Object>.<Name>`` from an ``ns=2;s=Object.Name`` id (or
    ``Device.<point>``), typed by its simulation's ``variant`` or its rest value.
    """
    # asyncua loads only when a device serves OPC-UA, as in SimFleet._serve
    from .opcua_server import PUMP_STATION, SimNode  # noqa: PLC0415

    stock = {node.node_id: node for node in PUMP_STATION}
    nodes: list[SimNode] = []
    keys: dict[str, str] = {}
    for point in points:
        if point.node is None:
            raise ValueError(f"{point.name}: the simulator serves points by node id, not path")
        ref = NodeRef.parse(point.node)
        if ref.namespace != 2 or ref.namespace_uri is not None:
            raise ValueError(f"{point.name}: the simulator serves namespace 2 only (ns=2;...)")
        spec = sims.get(point.name)
        node = stock.get(str(ref))
        if node is None:
            key = (
                ref.identifier
                if isinstance(ref.identifier, str) and "." in ref.identifier
                else f"Device.{point.name}"
            )
            initial: Any = spec.value if spec is not None and spec.value is not None else 0.0
            variant = (spec.variant if spec else None) or _VARIANTS.get(type(initial), "Double")
            node = SimNode(str(key), str(ref), variant, initial)
        elif spec is not None and spec.variant is not None and spec.variant != node.variant:
            node = SimNode(node.key, node.node_id, spec.variant, node.initial, node.writable)
        nodes.append(node)
        keys[point.name] = node.key
    return nodes, keys
