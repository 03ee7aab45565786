"""The agent's configuration file, as frozen pydantic models.

Unknown keys are errors everywhere (a misspelt key silently ignored is a sensor
silently not read). Protocol sections come from the driver packages; a device names
its protocol by the key it carries (``modbus:``), and the union below picks the model.
A section's model is named for its key with ``Config`` (``outbox:`` is ``OutboxConfig``),
so that it does not collide with the runtime class it configures (``Outbox``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers.base import Frozen, Violation, reject
from drivers.modbus.config import ModbusDevice, bus_conflicts
from drivers.mqtt.config import MqttDevice, broker_of, tls_file_problems
from drivers.opcua.config import OpcUaDevice
from edge_agent.bind_address import DEFAULT_HOST, bind_host_problem
from edge_agent.contract.topics import DEFAULT_ROOT, GATEWAY_ID, Topics, reserved_prefix
from edge_agent.durations import parse_duration
from edge_agent.rules.compile import CompiledRule, Loc, RuleErrors, compile_rules
from edge_agent.rules.model import Rule
from mqttlink.url import Broker, BrokerUrl

PROTOCOLS = ("modbus", "opcua", "mqtt")


def _protocol_of(device: Any) -> str | None:
    if isinstance(device, dict):
        present = [p for p in PROTOCOLS if p in device]
        return present[0] if len(present) == 1 else None
    for p in PROTOCOLS:
        if getattr(device, p, None) is not None:
            return p
    return None


DeviceConfig = Annotated[
    Annotated[ModbusDevice, Tag("modbus")]
    | Annotated[OpcUaDevice, Tag("opcua")]
    | Annotated[MqttDevice, Tag("mqtt")],
    Discriminator(
        _protocol_of,
        custom_error_type="device_protocol",
        custom_error_message=f"a device needs exactly one protocol section: {', '.join(PROTOCOLS)}",
    ),
]
UNION_TAGS = frozenset(PROTOCOLS)
"""Tags pydantic puts into error locations; they are not keys of the file."""


class GatewayConfig(Frozen):
    id: str = Field(
        pattern=f"^{GATEWAY_ID.pattern}$", description="unique in the fleet; a topic level"
    )
    site: str = ""
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        reserved = reserved_prefix(value)
        if reserved is not None:
            raise ValueError(f"{reserved}, not a gateway's")
        return value


def _duration(value: object) -> object:
    """Text through the one duration parser (``7d``); a YAML number is seconds already."""
    return parse_duration(value) if isinstance(value, str) else value


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0)]


class TlsFiles(Frozen):
    """``central: tls:``, the files of a TLS client certificate (``edge-agent enroll``
    installs them); paths relative to the config file."""

    ca: Path | None = Field(default=None, description="the fleet's CA (default: system)")
    cert: Path | None = Field(default=None, description="this gateway's certificate")
    key: Path | None = Field(default=None, description="its private key (0600)")


TLS_KEYS = {"ca_file": "ca", "cert_file": "cert", "key_file": "key"}
"""The flat keys of ``central:`` and their names under ``tls:``."""


@dataclass(slots=True)
class BrokerFiles:
    """A ``central:`` section as ``drivers.mqtt.config`` reads a broker section, its TLS
    files taken from ``tls:`` when it has one."""

    url: str
    username: str | None
    password_file: Path | None
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None


class Central(Frozen):
    url: str = Field(
        default="mqtt://127.0.0.1:1883", description="the central broker: mqtt:// or mqtts://"
    )
    topic_root: str = DEFAULT_ROOT
    username: str | None = Field(default=None, min_length=1)
    password_file: Path | None = Field(default=None, description="file holding the password")
    ca_file: Path | None = Field(default=None, description="mqtts: CA bundle (default: system)")
    cert_file: Path | None = Field(default=None, description="mqtts: client certificate")
    key_file: Path | None = Field(default=None, description="mqtts: client certificate's key")
    tls: TlsFiles | None = Field(
        default=None, description="mqtts: {ca, cert, key}, in place of the three *_file keys"
    )
    keepalive_s: int = Field(default=10, ge=2, le=3600)
    command_key: Path | None = Field(
        default=None, description="the center's Ed25519 public key; without it, no commands"
    )
    reconnect_max_s: float = Field(
        default=2.0, ge=0.5, le=300, description="cap of the jittered reconnect backoff"
    )
    renew_before: Duration = Field(
        default=30 * 86400,
        description="a client certificate is renewed in band this long before it expires",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        BrokerUrl.parse(v)
        return v

    @field_validator("topic_root")
    @classmethod
    def _root(cls, v: str) -> str:
        Topics(v)
        return v

    @model_validator(mode="after")
    def _fits(self) -> Self:
        problems: list[Violation] = []
        if self.password_file is not None and self.username is None:
            problems.append((("username",), "password_file needs a username", None))
        if self.tls is not None:
            for flat in TLS_KEYS:
                if getattr(self, flat) is not None:
                    problems.append(((flat,), f"{flat} and tls: are two ways to say it: one", None))
        problems += [
            (self.loc(*loc), why, value) for loc, why, value in tls_file_problems(self.files)
        ]
        reject(type(self).__name__, problems)
        return self

    @property
    def files(self) -> BrokerFiles:
        """The broker section as the MQTT client's settings read it."""
        tls = self.tls or TlsFiles()
        return BrokerFiles(
            url=self.url,
            username=self.username,
            password_file=self.password_file,
            ca_file=tls.ca or self.ca_file,
            cert_file=tls.cert or self.cert_file,
            key_file=tls.key or self.key_file,
        )

    def loc(self, *loc: str | int) -> tuple[str | int, ...]:
        """Where a problem of ``files`` is in this section: under ``tls:`` if it has one."""
        if self.tls is not None and loc and loc[0] in TLS_KEYS:
            return ("tls", TLS_KEYS[str(loc[0])], *loc[1:])
        return loc

    @property
    def broker(self) -> Broker:
        """The settings the uplink connects with (files are read at each connect)."""
        return broker_of(self.files)


class OutboxConfig(Frozen):
    path: Path = Path("outbox.db")
    max_mb: float = Field(default=256, gt=0)
    max_age: Duration = Field(default=7 * 86400, description="telemetry older than this is dropped")
    ballast_mb: float = Field(
        default=8, ge=0, description="space held back so a full disk cannot block recovery"
    )
    batch_max: int = Field(default=1000, ge=1, le=10_000, description="readings per message")
    ack_timeout_s: float = Field(default=10, gt=0, description="resend a batch unacked this long")
    window: int = Field(default=64, ge=1, le=10_000, description="unacked batches in flight")


class HealthConfig(Frozen):
    interval_s: float = Field(default=10, gt=0)
    metrics_port: int | None = Field(
        default=None,
        description="serve Prometheus metrics on this TCP port (1-65535); absent: none",
    )
    metrics_host: str = Field(
        default=DEFAULT_HOST, description="address the metrics are served on (0.0.0.0: all)"
    )

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _port(cls, v: object) -> object:
        # a plain message for what a technician would write: 0, 70000, "9100/tcp"
        if v is None:
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            raise ValueError(
                f"{v!r} is not a TCP port: a whole number from 1 to 65535 (leave "
                "metrics_port out to serve no metrics)"
            )
        return v

    @field_validator("metrics_host")
    @classmethod
    def _host(cls, v: str) -> str:
        problem = bind_host_problem(v)
        if problem is not None:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _host_needs_port(self) -> Self:
        if self.metrics_port is None and "metrics_host" in self.model_fields_set:
            reject(
                type(self).__name__,
                [(("metrics_host",), "metrics_host needs a metrics_port to serve on", None)],
            )
        return self


class AlarmsConfig(Frozen):
    max_new_per_min: int = Field(
        default=30, ge=1, description="flood control: past this, non-critical alarms are summarised"
    )
    chatter_count: int = Field(
        default=3,
        ge=0,
        description="activations within chatter_window_s (inclusive) that make an alarm "
        "chatter; 0: never",
    )
    chatter_window_s: float = Field(
        default=60, gt=0, description="the chatter window; a chattering alarm clears after it"
    )
    reannunciate_critical_s: float = Field(
        default=300, ge=0, description="announce an unacknowledged critical alarm again; 0: never"
    )

    @field_validator("chatter_count")
    @classmethod
    def _chatter_count(cls, v: int) -> int:
        if v == 1:
            raise ValueError("1 would make every alarm chatter on its first activation: 0 or 2+")
        return v

    def engine_options(self) -> dict[str, Any]:
        """The rule engine's keyword arguments for these settings."""
        return {
            "max_new_per_min": self.max_new_per_min,
            "chatter_count": self.chatter_count,
            "chatter_window_s": self.chatter_window_s,
            "reannunciate_critical_s": self.reannunciate_critical_s,
        }


class DeviceProfile(Frozen):
    """The profile a device entry was built from: set by the loader, not a key of the file."""

    ref: str = Field(description="vendor/model@firmware as the device named it")
    file: str = Field(description="the profile file it was read from")
    rules: list[Rule] = Field(default_factory=list, description="the profile's default rules")


class AgentConfig(Frozen):
    gateway: GatewayConfig
    profile_dirs: list[Path] = Field(
        default_factory=list,
        description="folders searched for device profiles before the shipped firmware_profiles/",
    )
    device_profiles: dict[str, DeviceProfile] = Field(
        default_factory=dict, description="by device id: set by the loader from devices[].profile"
    )
    central: Central = Central()
    outbox: OutboxConfig = OutboxConfig()
    health: HealthConfig = HealthConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    devices: list[DeviceConfig] = Field(default_factory=list)
    rule_packs: list[str] = Field(default_factory=list, description="smoke, water, elevator")
    rules: list[Rule] = Field(default_factory=list)

    @field_validator("device_profiles", mode="before")
    @classmethod
    def _not_in_files(cls, v: object) -> object:
        if v:
            raise ValueError("set from devices[].profile by the loader; not a key of the file")
        return v

    def device_points(self) -> dict[str, frozenset[str]]:
        return {d.id: frozenset(p.name for p in d.points) for d in self.devices}

    def compiled_rules(self) -> list[CompiledRule]:
        """Every rule bound to its device(s); raises RuleError with the config location."""
        profile_rules = {dev: p.rules for dev, p in self.device_profiles.items()}
        return compile_rules(self.device_points(), self.rules, self.rule_packs, profile_rules)

    @property
    def topics(self) -> Topics:
        return Topics(self.central.topic_root)


def cross_checks(cfg: AgentConfig) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that span several entries; each problem comes with the path it points at."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    seen: dict[str, int] = {}
    for i, dev in enumerate(cfg.devices):
        if dev.id in seen:
            problems.append(
                (
                    ("devices", i, "id"),
                    f"device id {dev.id!r} is already used by devices[{seen[dev.id]}]",
                )
            )
        seen.setdefault(dev.id, i)
    problems += bus_conflicts(cfg.devices)  # one serial line has one speed and framing
    try:  # a device id given twice does not keep the rules from being checked
        cfg.compiled_rules()
    except RuleErrors as exc:
        problems += [(e.loc, e.message) for e in exc.errors]
    return problems


_DEVICE: TypeAdapter[Any] = TypeAdapter(DeviceConfig)


def rule_checks_of_valid_parts(data: Mapping[str, Any]) -> list[tuple[Loc, str]]:
    """The rule checks of a config that did not validate as a whole, on the parts that
    did: each rule that is valid on its own, bound to the devices that are, so that a bad
    ``severity`` in one rule does not hide an unknown point in the next. A rule naming a
    device that did not validate is left for the next round (its point names are not
    known yet)."""
    raw_devices = data.get("devices")
    raw_rules = data.get("rules")
    packs = data.get("rule_packs")
    devices: dict[str, frozenset[str]] = {}
    unknown_ids: set[object] = set()
    for raw in raw_devices if isinstance(raw_devices, list) else []:
        try:
            device = _DEVICE.validate_python(raw)
        except ValidationError:
            unknown_ids.add(raw.get("id") if isinstance(raw, dict) else None)
            continue
        devices.setdefault(device.id, frozenset(p.name for p in device.points))
    rules: list[Rule] = []
    index: list[int] = []
    for i, raw in enumerate(raw_rules if isinstance(raw_rules, list) else []):
        try:
            rule = Rule.model_validate(raw)
        except ValidationError:
            continue
        if rule.device in unknown_ids or (None in unknown_ids and rule.device not in devices):
            continue
        rules.append(rule)
        index.append(i)
    names = [p for p in packs if isinstance(p, str)] if isinstance(packs, list) else []
    try:
        compile_rules(devices, rules, names if len(names) == len(packs or []) else [])
    except RuleErrors as exc:
        return [(_in_file(e.loc, index), e.message) for e in exc.errors]
    return []


def _in_file(loc: Loc, index: list[int]) -> Loc:
    """An error of the i-th rule checked, at that rule's index in the file."""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        return ("rules", index[loc[1]], *loc[2:])
    return loc
