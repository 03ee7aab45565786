"""Config models of MQTT devices: a local broker, a topic filter, and where each point's
value sits in the payload.

One entry can stand for many devices: with ``id: "{id}"`` (or ``"smoke-{id}"``) and
``id_from: 1``, every topic matching ``sensors/+/up`` is a device of its own, named by the
topic's level 1. Nothing here imports paho; ``jmespath`` is pure Python and checks a
point's ``path`` when the config is loaded, not when the first message arrives.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Protocol, Self

import jmespath
from jmespath.exceptions import JMESPathError
from pydantic import Field, field_validator, model_validator

from drivers.base import DEVICE_ID, DeviceBase, Frozen, PointBase, Violation, reject
from drivers.host_files import ca_file_problem, cert_and_key_problems, password_file_problem
from mqttlink.url import Broker, BrokerUrl

ID_TEMPLATE = re.compile(r"^[A-Za-z0-9._-]{0,40}\{id\}[A-Za-z0-9._-]{0,40}$")
"""A device id with ``{id}`` where the topic level goes: ``{id}``, ``smoke-{id}``."""

MAX_PAYLOAD_LIMIT = 16 * 1024 * 1024
"""The highest ``max_payload_bytes`` accepted; the broker is told the same limit per packet."""

TRUE_WORDS = frozenset({"true", "on", "yes", "1", "alarm", "active", "fire", "triggered", "wet"})
FALSE_WORDS = frozenset({"false", "off", "no", "0", "normal", "inactive", "ok", "clear", "dry"})
"""Boolean words as wireless sensors and bridges send them, compared case-insensitively.
Words that mean opposite things on different devices (open/closed, high/low) are left
out: a point that uses them says so in ``true_words``/``false_words``."""


def topic_levels(topic_filter: str) -> list[str]:
    """The levels of a topic filter, checked: ``+`` and ``#`` are whole levels, ``#`` last."""
    if not topic_filter:
        raise ValueError("a topic filter cannot be empty")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if ("+" in level or "#" in level) and level not in ("+", "#"):
            raise ValueError(f"{topic_filter!r}: a wildcard (+ or #) must be a whole level")
        if level == "#" and i != len(levels) - 1:
            raise ValueError(f"{topic_filter!r}: # may only be the last level")
    return levels


class BrokerFields(Protocol):
    """The keys a config section names a broker with: the gateway's ``central:`` and a
    wireless sensors' ``mqtt:`` connection."""

    url: str
    username: str | None
    password_file: Path | None
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None


def tls_file_problems(section: BrokerFields) -> list[Violation]:
    """TLS files on a plain ``mqtt://`` url, or a certificate without its key (or back)."""
    problems: list[Violation] = []
    tls = BrokerUrl.parse(section.url).tls
    for key in ("ca_file", "cert_file", "key_file"):
        if getattr(section, key) is not None and not tls:
            problems.append(((key,), f"{key} needs an mqtts:// url", getattr(section, key)))
    if (section.cert_file is None) != (section.key_file is None):
        problems.append((("cert_file",), "cert_file and key_file go together", None))
    return problems


def broker_file_problems(section: BrokerFields) -> list[Violation]:
    """The host pass of a broker section: its password file, CA bundle, and certificate
    with its key, each what it should be (the schema pass checked that they fit)."""
    problems: list[Violation] = []
    if section.password_file is not None:
        problem = password_file_problem(section.password_file)
        if problem is not None:
            problems.append((("password_file",), problem, section.password_file))
    if section.ca_file is not None:
        problem = ca_file_problem(section.ca_file)
        if problem is not None:
            problems.append((("ca_file",), problem, section.ca_file))
    if section.cert_file is not None and section.key_file is not None:
        for which, message in cert_and_key_problems(section.cert_file, section.key_file):
            problems.append(((f"{which}_file",), message, None))
    return problems


def broker_of(section: BrokerFields) -> Broker:
    """The settings a client connects with (the files are read at each connect)."""
    return Broker(
        url=BrokerUrl.parse(section.url),
        ca_file=section.ca_file,
        cert_file=section.cert_file,
        key_file=section.key_file,
        username=section.username,
        password_file=section.password_file,
    )


class MqttConnection(Frozen):
    url: str = Field(description="the local broker: mqtt://host[:port] or mqtts://host[:port]")
    topic: str = Field(description="topic filter to subscribe to, e.g. sensors/+/up")
    id_from: int | None = Field(
        default=None, ge=0, le=31, description="topic level (0-based) that names the device"
    )
    qos: Literal[0, 1, 2] = 1
    version: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version")
    client_id: str = Field(default="", description="empty: the broker assigns one")
    username: str | None = Field(default=None, min_length=1)
    password_file: Path | None = Field(default=None, description="file holding the password")
    ca_file: Path | None = Field(default=None, description="mqtts: CA bundle (default: system)")
    cert_file: Path | None = Field(default=None, description="mqtts: client certificate")
    key_file: Path | None = Field(default=None, description="mqtts: client certificate's key")
    keepalive_s: int = Field(default=30, ge=2, le=3600)
    max_payload_bytes: int = Field(
        default=64 * 1024,
        ge=16,
        le=MAX_PAYLOAD_LIMIT,
        description="bigger payloads are counted as oversized and dropped unread",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        BrokerUrl.parse(v)
        return v

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        topic_levels(v)
        return v

    @model_validator(mode="after")
    def _fits(self) -> Self:
        problems: list[Violation] = []
        if (self.username is None) != (self.password_file is None):
            problems.append((("username",), "username and password_file go together", None))
        problems += tls_file_problems(self)
        if self.id_from is not None:
            levels = topic_levels(self.topic)
            under_hash = levels[-1] == "#" and self.id_from >= len(levels) - 1
            if not under_hash and (self.id_from >= len(levels) or levels[self.id_from] != "+"):
                message = (
                    f"level {self.id_from} of {self.topic!r} is not a + wildcard "
                    "(levels count from 0)"
                )
                problems.append((("id_from",), message, self.id_from))
        reject(type(self).__name__, problems)
        return self

    @property
    def tls(self) -> bool:
        return BrokerUrl.parse(self.url).tls

    @property
    def host(self) -> str:
        return BrokerUrl.parse(self.url).host

    @property
    def port(self) -> int:
        return BrokerUrl.parse(self.url).port

    @property
    def broker(self) -> Broker:
        """The settings the driver connects with (files are read at each connect)."""
        return broker_of(self)


PointType = Literal["number", "int", "float", "bool", "string"]


class MqttPoint(PointBase):
    path: str | None = Field(
        default=None,
        description="JMESPath into a JSON payload (flags.battery_low); none: the whole payload",
    )
    type: PointType = "number"
    scale: float = Field(default=1.0, allow_inf_nan=False)
    offset: float = Field(default=0.0, allow_inf_nan=False)
    true_words: list[str] | None = Field(default=None, description="bool: replaces TRUE_WORDS")
    false_words: list[str] | None = Field(default=None, description="bool: replaces FALSE_WORDS")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                jmespath.compile(v)
            except JMESPathError as exc:
                raise ValueError(f"bad JMESPath {v!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _fits_type(self) -> Self:
        problems: list[Violation] = []
        numeric = self.type in ("number", "int", "float")
        if not numeric and (self.scale != 1 or self.offset != 0):
            message = f"scale and offset apply to numbers, not to {self.type}"
            problems.append((("scale",), message, self.scale))
        if self.scale == 0:
            problems.append((("scale",), "scale 0 would turn every value into the offset", 0))
        for key in ("true_words", "false_words"):
            if getattr(self, key) is not None and self.type != "bool":
                problems.append(((key,), f"{key} applies to type bool", getattr(self, key)))
        if self.true_words and self.false_words:
            both = {w.lower() for w in self.true_words} & {w.lower() for w in self.false_words}
            if both:
                message = f"words both true and false: {', '.join(sorted(both))}"
                problems.append((("false_words",), message, sorted(both)))
        reject(type(self).__name__, problems)
        return self

    @property
    def words(self) -> tuple[frozenset[str], frozenset[str]]:
        """The (true, false) words of a bool point, lower case."""
        true = TRUE_WORDS if self.true_words is None else {w.lower() for w in self.true_words}
        false = FALSE_WORDS if self.false_words is None else {w.lower() for w in self.false_words}
        return frozenset(true), frozenset(false)


class MqttDevice(DeviceBase):
    id: str = Field(
        description='device id, or a template such as "{id}" filled from the topic (id_from)'
    )
    mqtt: MqttConnection
    points: list[MqttPoint] = Field(min_length=1)
    heartbeat_s: float | None = Field(
        default=None,
        gt=0,
        le=7 * 86_400,
        description="how often the device reports at least; none: never marked stale",
    )
    missed_heartbeats: int = Field(
        default=2, ge=1, le=100, description="stale after this many heartbeats without a message"
    )
    queue_max: int = Field(
        default=100, ge=1, le=100_000, description="readings kept per device between two polls"
    )
    max_devices: int = Field(
        default=1000, ge=1, le=100_000, description="devices one {id} entry may create"
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not (DEVICE_ID.match(v) or ID_TEMPLATE.match(v)):
            raise ValueError(
                f"{v!r}: a device id (letters, digits, . _ -, up to 64) or a template "
                'with {id}, such as "{id}" or "smoke-{id}"'
            )
        return v

    def host_problems(self) -> list[Violation]:
        return [
            ((("mqtt", *loc)), message, value)
            for loc, message, value in broker_file_problems(self.mqtt)
        ]

    @property
    def templated(self) -> bool:
        return "{id}" in self.id

    def device_id(self, level: str) -> str | None:
        """The id of the device a topic level names, or None if it makes no valid id."""
        name = self.id.replace("{id}", level)
        return name if DEVICE_ID.match(name) and "\n" not in name else None

    @property
    def stale_after_s(self) -> float | None:
        if self.heartbeat_s is None:
            return None
        return self.heartbeat_s * self.missed_heartbeats

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems: list[Violation] = []
        if self.templated and self.mqtt.id_from is None:
            message = "an id with {id} needs mqtt.id_from: the topic level that names the device"
            problems.append((("id",), message, self.id))
        if not self.templated and self.mqtt.id_from is not None:
            message = 'id_from names devices from the topic: give the id as a template ("{id}")'
            problems.append((("mqtt", "id_from"), message, self.mqtt.id_from))
        first: dict[str, int] = {}
        for i, point in enumerate(self.points):
            if point.name in first:
                message = (
                    f"duplicate point name {point.name!r} (first at points[{first[point.name]}])"
                )
                problems.append((("points", i, "name"), message, point.name))
            first.setdefault(point.name, i)
        reject(type(self).__name__, problems)
        return self
