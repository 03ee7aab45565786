"""A sim file (``sim.yaml``): gateways and, for each, simulated devices by profile::

    seed: 7                              # same seed, same values: a run can be asserted on
    tick_s: 1                            # simulated seconds per step
    speed: 1                             # simulated seconds per wall second (10: ten times)
    host: 127.0.0.1                      # where Modbus and OPC-UA simulators listen
    broker: mqtt://127.0.0.1:1883        # where simulated wireless devices publish
    central: mqtt://127.0.0.1:1883       # what the written agent configs publish to
    command_key: center.pub              # the center's public key, in the written configs
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
Problems are reported as ``file:line: field: message``, as for agent configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, ValidationError, field_validator, model_validator

from drivers.base import Frozen
from drivers.simulated.scenario import scenario_names
from edge_agent.config.problems import (
    Problem,
    ProblemsError,
    load_mapping,
    read_file_text,
    validation_problems,
)
from edge_agent.config.yaml_lines import Located
from edge_agent.contract.topics import GATEWAY_ID
from mqttlink.url import BrokerUrl


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

    @field_validator("scenario")
    @classmethod
    def _shipped(cls, v: str | None) -> str | None:
        """A shipped scenario by name is known here, so that a misspelt one is said with
        every other mistake of the file (a ``.yaml`` file is read when the plan is made)."""
        if v is not None and not v.endswith((".yaml", ".yml")) and v not in scenario_names():
            raise ValueError(f"no scenario {v!r}; shipped: {', '.join(scenario_names())}")
        return v

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
    command_key: Path | None = Field(
        default=None,
        description="the center's public key (fleet keys init): central.command_key of the "
        "written agent configs, so that the center's commands are accepted (and only "
        "the acks it signs: run it with --key)",
    )
    rule_packs: list[str] = Field(default_factory=list)
    health_s: float = Field(default=5.0, gt=0)
    profile_dirs: list[Path] = Field(default_factory=list)
    gateways: list[SimGateway] = Field(min_length=1)

    @field_validator("broker", "central")
    @classmethod
    def _url(cls, v: str) -> str:
        BrokerUrl.parse(v)
        return v


class SimConfigError(ProblemsError):
    """The sim file cannot be run; ``problems`` lists each problem found, at its line, and
    ``located`` is the file's data if it was a mapping (to check its valid parts)."""

    def __init__(self, problems: list[Problem], located: Located | None = None) -> None:
        super().__init__(problems)
        self.located = located


def read_sim_file(path: Path, overrides: Mapping[str, object]) -> tuple[SimFile, Located]:
    """The sim file, with ``overrides`` (those not None) in place of its own keys, and the
    line of every key; SimConfigError with every problem."""
    name = str(path)
    text = read_file_text(path, name, SimConfigError)
    located, problems = load_mapping(text, name, SimConfigError)
    data = {**located.data, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        sim = SimFile.model_validate(data)
    except ValidationError as exc:
        raise SimConfigError(problems + validation_problems(exc, name, located), located) from None
    if problems:
        raise SimConfigError(problems, located)
    return sim, located
