"""The wire contract between gateways and the center: topics and payloads.

The agent and the central service both import this package; it is the only place
that knows topic layout and payload shape.

Its names load on first use (PEP 562), so that a caller that needs only the topics
(``fleet --help`` for ``DEFAULT_ROOT``) does not load the payload and alarm types, nor
pydantic with them: ``from edge_agent.contract import Topics`` reads as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.contract.alarms import (
        AlarmEvent,
        AlarmMessage,
        AlarmState,
        Severity,
        decode_alarm,
        decode_alarm_body,
        encode_alarm,
        encode_alarm_body,
    )
    from edge_agent.contract.payloads import (
        Ack,
        NamedRows,
        PayloadError,
        ReadingEncoder,
        TelemetryBatch,
        decode_ack,
        decode_health,
        decode_state,
        decode_telemetry,
        encode_ack,
        encode_health,
        encode_state,
        encode_telemetry,
        encode_telemetry_raw,
        merge_ranges,
        named_rows,
        reading_dict,
    )
    from edge_agent.contract.topics import (
        DEFAULT_ROOT,
        Channel,
        TopicError,
        Topics,
        check_gateway_id,
    )

_LAZY = {
    "AlarmEvent": "edge_agent.contract.alarms",
    "AlarmMessage": "edge_agent.contract.alarms",
    "AlarmState": "edge_agent.contract.alarms",
    "Severity": "edge_agent.contract.alarms",
    "decode_alarm": "edge_agent.contract.alarms",
    "decode_alarm_body": "edge_agent.contract.alarms",
    "encode_alarm": "edge_agent.contract.alarms",
    "encode_alarm_body": "edge_agent.contract.alarms",
    "Ack": "edge_agent.contract.payloads",
    "NamedRows": "edge_agent.contract.payloads",
    "PayloadError": "edge_agent.contract.payloads",
    "ReadingEncoder": "edge_agent.contract.payloads",
    "TelemetryBatch": "edge_agent.contract.payloads",
    "decode_ack": "edge_agent.contract.payloads",
    "decode_health": "edge_agent.contract.payloads",
    "decode_state": "edge_agent.contract.payloads",
    "decode_telemetry": "edge_agent.contract.payloads",
    "encode_ack": "edge_agent.contract.payloads",
    "encode_health": "edge_agent.contract.payloads",
    "encode_state": "edge_agent.contract.payloads",
    "encode_telemetry": "edge_agent.contract.payloads",
    "encode_telemetry_raw": "edge_agent.contract.payloads",
    "merge_ranges": "edge_agent.contract.payloads",
    "named_rows": "edge_agent.contract.payloads",
    "reading_dict": "edge_agent.contract.payloads",
    "Channel": "edge_agent.contract.topics",
    "DEFAULT_ROOT": "edge_agent.contract.topics",
    "TopicError": "edge_agent.contract.topics",
    "Topics": "edge_agent.contract.topics",
    "check_gateway_id": "edge_agent.contract.topics",
}
"""Each name of the package, and the module that defines it."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


__all__ = [
    "DEFAULT_ROOT",
    "Ack",
    "AlarmEvent",
    "AlarmMessage",
    "AlarmState",
    "Channel",
    "NamedRows",
    "PayloadError",
    "ReadingEncoder",
    "Severity",
    "TelemetryBatch",
    "TopicError",
    "Topics",
    "check_gateway_id",
    "decode_ack",
    "decode_alarm",
    "decode_alarm_body",
    "decode_health",
    "decode_state",
    "decode_telemetry",
    "encode_ack",
    "encode_alarm",
    "encode_alarm_body",
    "encode_health",
    "encode_state",
    "encode_telemetry",
    "encode_telemetry_raw",
    "merge_ranges",
    "named_rows",
    "reading_dict",
]
