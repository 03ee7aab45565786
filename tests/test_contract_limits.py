"""The contract's bounds (``edge_agent.contract.limits``): what the center refuses before
it stores anything (too big, NaN and infinity, times no clock could have stamped), and the
proof that the agent cannot build a message the center would refuse for its size.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from central.broker_config import BrokerConfig
from drivers.base import DEVICE_ID, UNIT_MAX, PointBase, Quality, Reading
from edge_agent.contract import (
    AlarmEvent,
    AlarmMessage,
    AlarmState,
    PayloadError,
    ReadingEncoder,
    Severity,
    decode_alarm,
    decode_health,
    decode_state,
    decode_telemetry,
    encode_alarm,
    named_rows,
    payloads,
    reading_dict,
)
from edge_agent.contract.alarms import encode_alarm_within
from edge_agent.contract.limits import (
    ID_MAX,
    MESSAGE_MAX_BYTES,
    READING_MAX_BYTES,
    REASON_MAX,
    TS_AHEAD_S,
    TS_MIN,
    VALUE_TEXT_MAX,
)
from edge_agent.contract.payloads import encode_telemetry_raw

NOW = time.time()
# the broker config `fleet broker-config` renders from packaging/mosquitto.conf
BROKER_CONF = BrokerConfig(Path("/etc/edgefleet/ca"), Path("/etc/mosquitto/edgefleet")).render()[
    "mosquitto.conf"
]
STREAM = "0f3c2a9e-5b7d-4c1e-8a6f-2d4b9e7c1a3f"


def strict_loads(text: str | bytes) -> Any:
    """JSON as a strict parser (jq, JavaScript) reads it: no NaN or Infinity literals."""

    def refuse(literal: str) -> Any:
        raise ValueError(f"{literal} is not JSON")

    return json.loads(text, parse_constant=refuse)


def reading(**override: Any) -> dict[str, Any]:
    return {"dev": "m-1", "pt": "p", "v": 1.5, "u": "kWh", "q": "good", "ts": NOW} | override


def batch(*readings: dict[str, Any]) -> bytes:
    rs = list(readings) or [reading()]
    obj = {"gw": "gw-1", "stream": "s", "seq_first": 1, "seq_last": len(rs), "readings": rs}
    return json.dumps(obj).encode()


def alarm(**override: Any) -> dict[str, Any]:
    return {
        "gw": "gw-1",
        "stream": "s",
        "seq": 1,
        "id": "m-1/over",
        "rule": "over",
        "dev": "m-1",
        "severity": "major",
        "state": "active",
        "value": 3.0,
        "ts": NOW,
        "msg": "over",
        "occurrence": 1,
        "since": NOW,
    } | override


def raw(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()  # allow_nan: what a hostile sender can put on the wire


# --- size ------------------------------------------------------------------------------


def test_a_message_over_the_limit_is_refused_before_it_is_parsed() -> None:
    pad = MESSAGE_MAX_BYTES - len(batch(reading(r=""))) + 1
    big = batch(reading(r="x" * pad))
    assert len(big) == MESSAGE_MAX_BYTES + 1
    with pytest.raises(PayloadError, match=f"more than the {MESSAGE_MAX_BYTES} allowed"):
        decode_telemetry(big)
    # it names no rows either: acking them would need parsing what is refused unparsed
    assert named_rows(big, alarm=False) is None
    # and one byte under is parsed as usual
    fits = batch(reading(r="x" * (pad - 1)))
    assert len(fits) == MESSAGE_MAX_BYTES
    assert decode_telemetry(fits).seq_last == 1


def test_the_broker_config_refuses_what_the_contract_does() -> None:
    lines = BROKER_CONF.splitlines()
    assert f"message_size_limit {MESSAGE_MAX_BYTES}" in lines
    (packet,) = [line for line in lines if line.startswith("max_packet_size ")]
    assert int(packet.split()[1]) > MESSAGE_MAX_BYTES  # the payload and its topic fit


# --- values JSON cannot hold -------------------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_literals_are_refused_on_every_channel(literal: str) -> None:
    tel = batch(reading()).replace(b'"v": 1.5', f'"v": {literal}'.encode())
    assert literal.encode() in tel
    with pytest.raises(PayloadError, match="not a JSON number"):
        decode_telemetry(tel)
    with pytest.raises(PayloadError, match="not a JSON number"):
        decode_alarm(raw(alarm(since=123.25)).replace(b"123.25", literal.encode()))
    with pytest.raises(PayloadError, match="not a JSON number"):
        decode_health(f'{{"ts": {NOW}, "cpu": {literal}}}'.encode())
    with pytest.raises(PayloadError, match="not a JSON number"):
        decode_state(f'{{"online": true, "uptime": {literal}}}'.encode())


def test_a_number_too_big_for_a_float_is_refused_where_it_would_be_stored() -> None:
    """``1e400`` is no literal to refuse: JSON decodes it to infinity."""
    with pytest.raises(PayloadError, match=r"readings\[0\]\.v must be a finite"):
        decode_telemetry(batch(reading(v=123.25)).replace(b"123.25", b"1e400"))
    with pytest.raises(PayloadError, match=r"\$\.values\.smoke is not a finite"):
        decode_alarm(raw(alarm(values={"smoke": 123.25})).replace(b"123.25", b"1e400"))
    with pytest.raises(PayloadError, match=r"\$\.outbox\.oldest_age_s is not a finite"):
        decode_health(f'{{"ts": {NOW}, "outbox": {{"oldest_age_s": 1e400}}}}'.encode())
    with pytest.raises(PayloadError, match=r"nested too deep|not JSON"):
        decode_health(b'{"ts": %f, "x": ' % NOW + b"[" * 5000 + b"]" * 5000 + b"}")


# --- times no clock stamped ------------------------------------------------------------


AHEAD = "an hour past the day ahead"  # worked out when the test runs, not at import


@pytest.mark.parametrize("ts", [1e308, -1.0, 0, TS_MIN - 0.001, AHEAD, 2**64, True])
def test_a_time_out_of_range_is_refused_in_readings_alarms_health_and_state(ts: Any) -> None:
    if ts == AHEAD:  # a suite takes minutes: NOW + a day + a minute is in range by then
        ts = time.time() + TS_AHEAD_S + 3600
    with pytest.raises(PayloadError, match=r"readings\[1\]\.ts must be a time from 2000"):
        decode_telemetry(batch(reading(), reading(ts=ts)))
    with pytest.raises(PayloadError, match="'ts'"):
        decode_alarm(raw(alarm(ts=ts)))
    with pytest.raises(PayloadError, match="'since' must be a time"):
        decode_alarm(raw(alarm(since=ts)))
    dropped = {"first": 1, "last": 2, "count": 2, "ts_first": ts, "ts_last": NOW}
    if type(ts) is not bool:  # a boolean is no number: the report is kept as sent, unused
        with pytest.raises(PayloadError, match=r"dropped\.ts_first"):
            decode_alarm(raw(alarm(rule="outbox.dropped", dropped=dropped)))
    with pytest.raises(PayloadError, match="'ts'"):
        decode_health(raw({"ts": ts}))
    with pytest.raises(PayloadError, match="'started' must be a time"):
        decode_state(raw({"online": True, "started": ts}))
    with pytest.raises(PayloadError, match="'stopped' must be a time"):
        decode_state(raw({"online": False, "stopped": ts}))


@pytest.mark.parametrize("ts", [TS_MIN, NOW, NOW + TS_AHEAD_S - 60, int(NOW)])
def test_a_plausible_time_is_taken_everywhere(ts: float) -> None:
    assert decode_telemetry(batch(reading(ts=ts))).readings[0]["ts"] == ts
    assert decode_alarm(raw(alarm(ts=ts, since=ts))).event.since == ts
    assert decode_health(raw({"ts": ts}))["ts"] == ts
    assert decode_state(raw({"online": True, "started": ts}))["started"] == ts
    assert decode_alarm(raw(alarm(since=None))).event.since is None  # never raised


# --- what the agent sends ----------------------------------------------------------------


def test_a_non_finite_reading_travels_as_null_with_its_quality_and_the_center_takes_it() -> None:
    encoder = ReadingEncoder()
    readings = [
        Reading("m-1", "total", math.nan, "kWh", Quality.GOOD, NOW),
        Reading("m-1", "flow", -math.inf, None, Quality.STALE, NOW),
    ]
    payload = encode_telemetry_raw("gw-1", STREAM, 1, [encoder.encode(r) for r in readings])
    strict_loads(payload)
    got = decode_telemetry(payload).readings
    assert [(r["v"], r["q"]) for r in got] == [(None, "good"), (None, "stale")]


def widest_reading() -> Reading:
    """The longest reading a config and a device can make: longest ids, a unit and texts
    at their bounds, each character one that JSON escapes to six bytes."""
    worst = "\x1f"
    ident = "d" * ID_MAX
    assert DEVICE_ID.match(ident)
    return Reading(
        ident,
        "p" * ID_MAX,
        worst * VALUE_TEXT_MAX,
        worst * UNIT_MAX,
        Quality.GOOD,
        -1.2345678901234567e-300,
        worst * REASON_MAX,
    )


def test_no_reading_the_agent_encodes_outgrows_its_bound_or_a_message() -> None:
    encoder = ReadingEncoder()
    widest = widest_reading()
    body = encoder.encode(widest)
    assert len(body.encode()) <= READING_MAX_BYTES
    assert json.loads(body) == reading_dict(widest)
    # the same with the texts past their bounds: the value becomes a bad reading, the
    # reason is cut; a reading longer than the bound cannot be made
    longer = widest._replace(value="é" * 10**6, reason="\x1f" * 10**6)
    body = encoder.encode(longer)
    assert len(body.encode()) <= READING_MAX_BYTES
    decoded = json.loads(body)
    assert decoded == reading_dict(longer)
    assert (decoded["v"], decoded["q"]) == (None, "bad")
    assert decoded["r"] == f"text value of 1000000 characters, more than {VALUE_TEXT_MAX}"
    cut = encoder.encode(widest._replace(reason="x" * (REASON_MAX + 1)))
    assert json.loads(cut)["r"] == "x" * (REASON_MAX - 1) + "…"
    huge_int = json.loads(encoder.encode(widest._replace(value=10**400)))
    assert (huge_int["v"], huge_int["q"], huge_int["r"]) == (None, "bad", "integer beyond 64 bits")
    # and a batch of one widest reading, from the longest gateway id, fits in a message
    payload, count = payloads.encode_telemetry_within("g" * 64, STREAM, 2**63 - 1, [body])
    assert count == 1 and len(payload) <= MESSAGE_MAX_BYTES


def test_a_unit_past_its_bound_is_a_config_error() -> None:
    PointBase(name="p", unit="u" * UNIT_MAX)
    with pytest.raises(ValueError, match=f"at most {UNIT_MAX} characters"):
        PointBase(name="p", unit="u" * (UNIT_MAX + 1))


def test_a_batch_is_cut_where_it_would_outgrow_a_message() -> None:
    encoder = ReadingEncoder()
    text = "ü" * VALUE_TEXT_MAX  # two bytes a character: counted in bytes, not characters
    bodies = [
        encoder.encode(Reading("m-1", "label", text, None, Quality.GOOD, NOW + i))
        for i in range(1000)
    ]
    payload, count = payloads.encode_telemetry_within("gw-1", STREAM, 7, bodies)
    assert len(payload) <= MESSAGE_MAX_BYTES
    one_more = encode_telemetry_raw("gw-1", STREAM, 7, bodies[: count + 1])
    assert len(one_more) > MESSAGE_MAX_BYTES  # as many as fit, not fewer
    batch_ = decode_telemetry(payload)
    assert (batch_.seq_first, batch_.seq_last) == (7, 7 + count - 1)
    assert [r["ts"] for r in batch_.readings] == [NOW + i for i in range(count)]
    small, n = payloads.encode_telemetry_within("gw-1", STREAM, 7, bodies[:3])
    assert n == 3 and small == encode_telemetry_raw("gw-1", STREAM, 7, bodies[:3])


def test_a_row_an_older_agent_wrote_unbounded_is_bounded_when_it_is_sent() -> None:
    """An outbox row from before the bounds: alone it would outgrow a message, and the
    gateway would send it again for ever. It goes out bounded, and the center takes it."""
    old = json.dumps(reading(v="x" * 2 * MESSAGE_MAX_BYTES, u="u" * 100), ensure_ascii=False)
    payload, count = payloads.encode_telemetry_within("gw-1", STREAM, 5, [old, old])
    assert count == 1 and len(payload) <= MESSAGE_MAX_BYTES
    (sent,) = decode_telemetry(payload).readings
    assert (sent["dev"], sent["pt"], sent["v"], sent["q"], sent["ts"]) == (
        "m-1",
        "p",
        None,
        "bad",
        NOW,
    )
    assert (
        sent["r"] == f"text value of {2 * MESSAGE_MAX_BYTES} characters, more than {VALUE_TEXT_MAX}"
    )
    assert sent["u"] == "u" * UNIT_MAX
    garbage = "{" * (MESSAGE_MAX_BYTES + 1)
    payload, count = payloads.encode_telemetry_within("gw-1", STREAM, 5, [garbage])
    (sent,) = decode_telemetry(payload).readings
    assert (count, sent["v"], sent["q"]) == (1, None, "bad")
    assert sent["r"].startswith(
        f"outbox row of {MESSAGE_MAX_BYTES + 1} characters is not a reading"
    )


def test_an_alarm_event_too_big_for_a_message_is_cut_to_fit_and_the_center_takes_it() -> None:
    """A rule over 300 points of long texts, and an operator's pasted shelving reason."""
    text = "\x1f" * VALUE_TEXT_MAX
    event = AlarmEvent(
        id="m-1/all",
        rule="all",
        dev="m-1",
        severity=Severity.MAJOR,
        state=AlarmState.SHELVED,
        value=text,
        ts=NOW,
        msg="m" * 10_000,
        values={f"p{i}": text for i in range(300)},
        reason="r" * 500_000,
        shelved_until=NOW + 3600,
    )
    message = AlarmMessage("gw-1", STREAM, 9, event)
    whole = encode_alarm(message)
    assert len(whole) > MESSAGE_MAX_BYTES
    payload = encode_alarm_within(message)
    assert len(payload) <= MESSAGE_MAX_BYTES
    got = decode_alarm(payload).event
    assert (got.id, got.state, got.shelved_until) == ("m-1/all", AlarmState.SHELVED, NOW + 3600)
    assert (got.value, got.values) == (text, None)  # a value within its bound is kept
    note = f"… [cut to fit a message: the event was {len(whole)} bytes]"
    assert got.msg == "m" * (REASON_MAX - 1) + note
    assert got.reason == "r" * (REASON_MAX - 1) + "…"
    small = AlarmMessage("gw-1", STREAM, 9, replace(event, values=None, reason="why", msg="m"))
    assert encode_alarm_within(small) == encode_alarm(small)  # what fits is sent as it is
