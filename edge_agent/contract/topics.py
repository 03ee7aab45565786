"""MQTT topics of the wire contract. Nothing else in the code base builds a topic by hand."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_ROOT = "edgefleet/v1"

GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Use with ``fullmatch``: ``$`` would let a trailing newline through. A name that
matches is a gateway's only if ``is_gateway_id`` says so too (``RESERVED_PREFIXES``)."""
ENROLL_PREFIX = "enroll-"
"""Names starting so are the broker's one-time enrollment identities (``enroll-GW``, whose
password is GW's token), never a gateway's: the broker takes a client's id from its name,
and a gateway named ``enroll-GW`` would share one with GW's enrollment."""
CLIENT_ID_PREFIX = "edgefleet-"
"""Every client id a client asks the fleet's broker for starts so (its ``clientid_prefixes``),
and no gateway's name does: on the listeners where a client's id is its name, no id a client
can ask for is a gateway's. Mosquitto 2.0.11 refuses a client that gives no name there only
after taking the id it asked for, and the refused client's cleanup then unlinks whichever
session holds that id from the broker's table (a reload later leaves that session with no
rights). Ids it asks for can only be the center's, which carry a secret (see
``mqttlink.url.Broker.client_id``)."""
RESERVED_PREFIXES = (ENROLL_PREFIX, CLIENT_ID_PREFIX)
_ROOT = re.compile(r"[^$#+/\s][^#+/\s]*(/[^#+/\s]+)*")
SHARE_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""An MQTT v5 share name [MQTT-4.8.2]: no ``/``, ``+`` or ``#``; ours also no spaces."""


class Channel(StrEnum):
    TELEMETRY = "telemetry"
    ALARMS = "alarms"
    STATE = "state"
    HEALTH = "health"
    ACK = "ack"
    CMD = "cmd"


class TopicError(ValueError):
    """A topic part would contain a wildcard, a separator or nothing at all."""


def is_gateway_id(name: str) -> bool:
    """Whether ``name`` may be a gateway's id: ``GATEWAY_ID``, and not a name the broker
    keeps (``RESERVED_PREFIXES``)."""
    return GATEWAY_ID.fullmatch(name) is not None and reserved_prefix(name) is None


def reserved_prefix(name: str) -> str | None:
    """Why ``name`` cannot be a gateway's for its start, or None: the broker's enrollment
    identities start ``enroll-``, the ids clients ask for ``edgefleet-``."""
    if name.startswith(ENROLL_PREFIX):
        return f"ids starting {ENROLL_PREFIX} are the broker's enrollment identities"
    if name.startswith(CLIENT_ID_PREFIX):
        return f"ids starting {CLIENT_ID_PREFIX} are the client ids clients ask the broker for"
    return None


def check_gateway_id(gateway: str) -> str:
    if not GATEWAY_ID.fullmatch(gateway):
        raise TopicError(
            f"gateway id {gateway!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(no '/', '+', '#' or spaces: it is a topic level)"
        )
    reserved = reserved_prefix(gateway)
    if reserved is not None:
        raise TopicError(f"gateway id {gateway!r}: {reserved}, not a gateway's")
    return gateway


def check_share_group(group: str) -> str:
    if not SHARE_GROUP.fullmatch(group):
        raise TopicError(
            f"share group {group!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(no '/', '+', '#' or spaces: it is a topic level)"
        )
    return group


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one contract root; ``gw(...)`` builds a gateway's, ``pattern(...)`` all."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        if not _ROOT.fullmatch(self.root):
            raise TopicError(f"topic root {self.root!r} must be levels without wildcards")

    def gw(self, gateway: str, channel: Channel) -> str:
        return f"{self.root}/gw/{check_gateway_id(gateway)}/{channel.value}"

    def pattern(self, channel: Channel) -> str:
        """Subscription filter for a channel across the whole fleet."""
        return f"{self.root}/gw/+/{channel.value}"

    def shared(self, group: str, channel: Channel) -> str:
        """The fleet-wide filter of a channel as an MQTT v5 shared subscription
        (``$share/<group>/…``): the broker gives each message to one member of the group."""
        return f"$share/{check_share_group(group)}/{self.pattern(channel)}"

    def feed(self) -> str:
        """The center's feed of what it committed (``central.feed``)."""
        return f"{self.root}/center/feed"

    def parse(self, topic: str) -> tuple[str, Channel] | None:
        """``(gateway, channel)`` of a contract topic, or None for anything else."""
        prefix = f"{self.root}/gw/"
        if not topic.startswith(prefix):
            return None
        rest = topic[len(prefix) :].split("/")
        if len(rest) != 2 or not is_gateway_id(rest[0]):
            return None
        try:
            return rest[0], Channel(rest[1])
        except ValueError:
            return None
