"""The wire contract between gateways and the center: topics and payloads.

The agent and the central service both import this package; it is the only place
that knows topic layout and payload shape.
"""

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
from edge_agent.contract.topics import DEFAULT_ROOT, Channel, TopicError, Topics, check_gateway_id

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
