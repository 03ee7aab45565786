"""The agent's configuration file, as frozen pydantic models.

Unknown keys are errors everywhere (a misspelt key silently ignored is a sensor
silently not read). Protocol sections come from the driver packages; a device names
its protocol by the key it carries (``modbus:``), and the union below picks the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Discriminator, Field, Tag, field_validator

from drivers.base import Frozen
from drivers.modbus.config import ModbusDevice
from edge_agent.contract.topics import DEFAULT_ROOT, GATEWAY_ID, Topics

PROTOCOLS = ("modbus",)


def _protocol_of(device: Any) -> str | None:
    if isinstance(device, dict):
        present = [p for p in PROTOCOLS if p in device]
        return present[0] if len(present) == 1 else None
    for p in PROTOCOLS:
        if getattr(device, p, None) is not None:
            return p
    return None


DeviceConfig = Annotated[
    Annotated[ModbusDevice, Tag("modbus")],
    Discriminator(
        _protocol_of,
        custom_error_type="device_protocol",
        custom_error_message=f"a device needs exactly one protocol section: {', '.join(PROTOCOLS)}",
    ),
]
UNION_TAGS = frozenset(PROTOCOLS)
"""Tags pydantic puts into error locations; they are not keys of the file."""


class Gateway(Frozen):
    id: str = Field(
        pattern=f"^{GATEWAY_ID.pattern}$", description="unique in the fleet; a topic level"
    )
    site: str = ""
    tags: dict[str, str] = Field(default_factory=dict)


class BrokerUrl(Frozen):
    """``mqtt://host:port`` (plain) or ``mqtts://host:port`` (TLS)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"{url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise ValueError(f"{url!r}: port must be a number from 1 to 65535") from None
        return cls(scheme=parts.scheme, host=parts.hostname, port=port)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class Central(Frozen):
    url: str = "mqtt://127.0.0.1:1883"
    topic_root: str = DEFAULT_ROOT
    username: str | None = None
    password_file: Path | None = None
    keepalive_s: int = Field(default=10, ge=2, le=3600)

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

    @property
    def broker(self) -> BrokerUrl:
        return BrokerUrl.parse(self.url)


class Outbox(Frozen):
    path: Path = Path("outbox.db")
    max_mb: float = Field(default=256, gt=0)
    batch_max: int = Field(default=1000, ge=1, le=10_000, description="readings per message")
    ack_timeout_s: float = Field(default=10, gt=0, description="resend a batch unacked this long")
    window: int = Field(default=64, ge=1, le=10_000, description="unacked batches in flight")


class Health(Frozen):
    interval_s: float = Field(default=10, gt=0)


class AgentConfig(Frozen):
    gateway: Gateway
    central: Central = Central()
    outbox: Outbox = Outbox()
    health: Health = Health()
    devices: list[DeviceConfig] = Field(default_factory=list)

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
    return problems
