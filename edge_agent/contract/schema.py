"""The JSON Schemas of the wire contract (``schemas/*.json``) and a validator over them.

The schemas are written for people integrating central systems, and the tests validate
what ``payloads.py`` encodes against them so the two cannot drift. The agent itself decodes
with ``payloads.decode_*`` and never needs a schema at run time: ``jsonschema`` is a dev
dependency only, imported when :func:`validate` is first called.

The schema files declare JSON Schema 2020-12 but use only keywords that mean the same in
draft-07, which is what AsyncAPI tooling understands (``docs/asyncapi.yaml``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from types import MappingProxyType
from typing import Any, Literal

from edge_agent.contract.payloads import JSON, PayloadError, loads
from edge_agent.contract.topics import Channel

CMD_REPLY: Literal["cmd_reply"] = "cmd_reply"
"""The reply to a command travels on the MQTT v5 response topic, not on a channel."""

CENTER_FEED: Literal["feed"] = "feed"
"""The center's feed (``{root}/center/feed``): what ingest committed, for any listener."""

SchemaName = Channel | Literal["cmd_reply", "feed"]

SCHEMA_FILES: Mapping[SchemaName, str] = MappingProxyType(
    {
        Channel.TELEMETRY: "telemetry.json",
        Channel.ALARMS: "alarm.json",
        Channel.STATE: "state.json",
        Channel.HEALTH: "health.json",
        Channel.ACK: "ack.json",
        Channel.CMD: "cmd.json",
        CMD_REPLY: "cmd_reply.json",
        CENTER_FEED: "feed.json",
    }
)

_MESSAGE_MAX = 300


@cache
def _schema_text(name: SchemaName) -> str:
    return (files("edge_agent.contract") / "schemas" / SCHEMA_FILES[name]).read_text(
        encoding="utf-8"
    )


def load_schema(channel: SchemaName) -> JSON:
    """The schema of a channel's payload (or of a command reply); a fresh dict every call."""
    schema: JSON = json.loads(_schema_text(channel))
    return schema


@cache
def _validator(name: SchemaName) -> Any:
    # jsonschema (a dev dependency) loads only when validating
    from jsonschema.validators import validator_for  # noqa: PLC0415

    schema = load_schema(name)
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate(channel: SchemaName, payload: bytes) -> None:
    """Raise :class:`PayloadError` naming the JSON path of what breaks the channel's schema.

    When several things are wrong, the error ``jsonschema`` ranks most relevant is reported.
    """
    try:
        # jsonschema (a dev dependency) loads only when validating
        from jsonschema.exceptions import best_match  # noqa: PLC0415
    except ImportError:
        raise RuntimeError(
            "validating payloads against the JSON Schemas needs the 'jsonschema' package, "
            "a dev dependency: pip install 'edgefleet[dev]'"
        ) from None
    obj = loads(payload)
    error = best_match(_validator(channel).iter_errors(obj))
    if error is not None:
        message = str(error.message)
        if len(message) > _MESSAGE_MAX:
            message = message[: _MESSAGE_MAX - 1] + "…"
        raise PayloadError(f"{error.json_path}: {message}")
