"""The wire contract: topics, payload codecs, the JSON Schemas and the AsyncAPI document agree."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator

from drivers.base import Quality, Reading
from edge_agent.contract import (
    DEFAULT_ROOT,
    Ack,
    AlarmEvent,
    AlarmMessage,
    AlarmState,
    Channel,
    NamedRows,
    PayloadError,
    TopicError,
    Topics,
    check_gateway_id,
    decode_ack,
    decode_alarm,
    decode_health,
    decode_state,
    decode_telemetry,
    encode_ack,
    encode_alarm,
    encode_health,
    encode_state,
    encode_telemetry,
    merge_ranges,
    named_rows,
    reading_dict,
)
from edge_agent.contract.alarms import (
    ALARM_STATES,
    SEVERITIES,
    ActionReport,
    ActionResult,
    ActionWrite,
    CorruptOutbox,
    DroppedRows,
    Severity,
    decode_alarm_body,
    encode_alarm_body,
)
from edge_agent.contract.payloads import ACK_RANGES_MAX
from edge_agent.contract.schema import (
    CENTER_FEED,
    CMD_REPLY,
    SCHEMA_FILES,
    SchemaName,
    load_schema,
    validate,
)

REPO = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO / "edge_agent" / "contract" / "schemas"
ASYNCAPI = REPO / "docs" / "asyncapi.yaml"

GW = "jingan-0001"
STREAM = "3f9c2b1e8a7d4c60b5e2f1a09d8c7e6b"
T0 = 1718083200.125

ALL_SCHEMAS: list[SchemaName] = list(SCHEMA_FILES)

# Keywords that exist only from 2019-09 on: draft-07 tooling (AsyncAPI) would ignore them.
NOT_IN_DRAFT7 = {
    "$defs",
    "$anchor",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
    "$vocabulary",
    "prefixItems",
    "unevaluatedItems",
    "unevaluatedProperties",
    "dependentRequired",
    "dependentSchemas",
    "minContains",
    "maxContains",
}


def walk(node: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def subschemas(schema: Any, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema position (not instance data such as ``examples`` or ``default``)."""
    if not isinstance(schema, dict):
        return
    yield path, schema
    for key in ("properties", "patternProperties"):
        for name, sub in schema.get(key, {}).items():
            yield from subschemas(sub, f"{path}.{key}.{name}")
    for key in ("items", "additionalProperties", "propertyNames", "if", "then", "else", "not"):
        if key in schema:
            yield from subschemas(schema[key], f"{path}.{key}")
    for key in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(schema.get(key, [])):
            yield from subschemas(sub, f"{path}.{key}[{i}]")


def as_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


# --- the schema files ----------------------------------------------------------------------


def test_every_schema_file_is_known_to_the_loader() -> None:
    assert {p.name for p in SCHEMA_DIR.glob("*.json")} == set(SCHEMA_FILES.values())
    assert set(SCHEMA_FILES) == {*Channel, CMD_REPLY, CENTER_FEED}


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_schema_is_a_valid_schema_under_2020_12_and_draft_07(name: SchemaName) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://edgefleet.example/schemas/v1/{SCHEMA_FILES[name]}"
    assert schema["title"]
    assert schema["description"]


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_schema_uses_no_keyword_draft_07_would_ignore(name: SchemaName) -> None:
    used = {key for _, node in subschemas(load_schema(name)) for key in node}
    assert used & NOT_IN_DRAFT7 == set()
    # In draft-07 keywords beside a $ref are ignored; inline schemas keep both drafts equal.
    assert all("$ref" not in node for _, node in subschemas(load_schema(name)))


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_every_property_is_described(name: SchemaName) -> None:
    # Properties restated under if/then/else only add a constraint to a described property.
    undescribed = [
        f"{path}.{key}.{prop}"
        for path, node in subschemas(load_schema(name))
        if not {"if", "then", "else"} & set(path.split("."))
        for key in ("properties", "patternProperties")
        for prop, sub in node.get(key, {}).items()
        if not isinstance(sub, dict) or not sub.get("description")
    ]
    assert undescribed == []


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_schema_examples_validate_under_both_drafts(name: SchemaName) -> None:
    schema = load_schema(name)
    examples = schema["examples"]
    assert len(examples) >= 1
    for example in examples:
        validate(name, as_bytes(example))
        assert list(Draft7Validator(schema).iter_errors(example)) == []


def test_examples_use_the_smoke_detector_gateway() -> None:
    for name in ALL_SCHEMAS:
        text = json.dumps(load_schema(name)["examples"])
        assert GW in text or "det-3" in text or STREAM in text, name


def test_load_schema_returns_a_fresh_dict() -> None:
    first = load_schema(Channel.TELEMETRY)
    first["title"] = "changed"
    assert load_schema(Channel.TELEMETRY)["title"] == "Telemetry batch"


def test_alarm_schema_enums_match_the_codec() -> None:
    props = load_schema(Channel.ALARMS)["properties"]
    assert tuple(props["severity"]["enum"]) == SEVERITIES
    assert tuple(props["state"]["enum"]) == ALARM_STATES
    reading = load_schema(Channel.TELEMETRY)["properties"]["readings"]["items"]
    assert set(reading["properties"]["q"]["enum"]) == {q.value for q in Quality}


def batch(**reading: Any) -> dict[str, Any]:
    """A one-reading telemetry batch, the reading changed by ``reading``."""
    good = {"dev": "det-3", "pt": "smoke", "v": 0.4, "u": "%/m", "q": "good", "ts": T0}
    return {
        "gw": GW,
        "stream": STREAM,
        "seq_first": 1,
        "seq_last": 1,
        "readings": [{**good, **reading}],
    }


@pytest.mark.parametrize(
    ("name", "payload", "path"),
    [
        (Channel.TELEMETRY, batch(x=1), "$.readings[0]"),
        (Channel.TELEMETRY, batch(q="ok"), "$.readings[0].q"),
        (Channel.TELEMETRY, batch(v=[1]), "$.readings[0].v"),
        (Channel.TELEMETRY, batch(dev="det 3"), "$.readings[0].dev"),
        (Channel.TELEMETRY, {"gw": "a/b", "stream": "s", "seq_first": 1, "seq_last": 0}, "$"),
        (Channel.ACK, {"stream": STREAM, "telemetry": [[1, 2, 3]]}, "$.telemetry[0]"),
        (Channel.ACK, {"stream": STREAM, "telemetry": [[0, 2]]}, "$.telemetry[0][0]"),
        (Channel.ACK, {"stream": STREAM, "gw": GW, "sig": "A" * 86 + "=="}, "$"),
        (Channel.ACK, {"stream": STREAM, "note": "x"}, "$"),
        (Channel.STATE, {"gw": GW, "online": True}, "$"),
        (Channel.STATE, {"gw": GW, "online": "yes"}, "$.online"),
        (
            Channel.ALARMS,
            {**load_schema(Channel.ALARMS)["examples"][0], "severity": "fatal"},
            "$.severity",
        ),
        (
            Channel.HEALTH,
            {
                **load_schema(Channel.HEALTH)["examples"][0],
                "devices": {
                    "det-3": {
                        "link": "flapping",
                        "reason": None,
                        "polls": 1,
                        "overruns": 0,
                        "errors": 0,
                    }
                },
            },
            "$.devices['det-3'].link",
        ),
        (Channel.CMD, {**load_schema(Channel.CMD)["examples"][0], "note": "unsigned"}, "$"),
        (Channel.CMD, {**load_schema(Channel.CMD)["examples"][0], "sig": "c2ln"}, "$.sig"),
        (CMD_REPLY, {"id": "c-1", "ok": True, "result": None, "error": "boom"}, "$.error"),
        (CMD_REPLY, {"id": "c-1", "ok": False, "result": None, "error": None}, "$.error"),
    ],
)
def test_validate_names_the_json_path_of_the_error(
    name: SchemaName, payload: dict[str, Any], path: str
) -> None:
    with pytest.raises(PayloadError) as info:
        validate(name, as_bytes(payload))
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("payload", [b"{", b"\xff\xfe", b"[1, 2]", b""])
def test_validate_refuses_what_is_not_a_json_object(payload: bytes) -> None:
    with pytest.raises(PayloadError, match="JSON"):
        validate(Channel.TELEMETRY, payload)


def test_validate_without_jsonschema_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema.exceptions", None)
    with pytest.raises(RuntimeError, match="jsonschema"):
        validate(Channel.STATE, encode_state(GW, False))


# --- what the encoders produce follows the schemas -----------------------------------------


def smoke_readings() -> list[Reading]:
    return [
        Reading("det-3", "smoke", 0.42, "%/m", Quality.GOOD, T0),
        Reading("det-3", "temperature", 23.6, "°C", Quality.GOOD, T0),
        Reading("det-3", "smoke_alarm", False, None, Quality.GOOD, T0),
        Reading.bad("det-7", "smoke", "%/m", T0 + 0.9, "timeout: no response from unit 7"),
        Reading("det-3", "smoke", math.nan, "%/m", Quality.GOOD, T0 + 1.0),
        Reading("det-3", "temperature", math.inf, "°C", Quality.STALE, T0 + 1.0, "no update 30 s"),
    ]


def test_encoded_telemetry_validates_and_decodes() -> None:
    readings = smoke_readings()
    payload = encode_telemetry(GW, STREAM, 48211, [reading_dict(r) for r in readings])
    validate(Channel.TELEMETRY, payload)

    batch = decode_telemetry(payload)
    assert (batch.gw, batch.stream, batch.seq_first, batch.seq_last) == (GW, STREAM, 48211, 48216)
    assert [(r["dev"], r["pt"], r["q"]) for r in batch.readings] == [
        (r.device, r.point, r.quality.value) for r in readings
    ]
    bad = batch.readings[3]
    assert bad == {
        "dev": "det-7",
        "pt": "smoke",
        "v": None,
        "u": "%/m",
        "q": "bad",
        "ts": T0 + 0.9,
        "r": "timeout: no response from unit 7",
    }
    assert "r" not in batch.readings[0]
    # NaN and infinity travel as null; the quality is the device's, not changed by encoding.
    assert (batch.readings[4]["v"], batch.readings[4]["q"]) == (None, "good")
    assert (batch.readings[5]["v"], batch.readings[5]["q"]) == (None, "stale")
    assert batch.readings[1]["u"] == "°C"


def test_encoded_alarm_validates_and_decodes() -> None:
    event = AlarmEvent(
        id="det-3.smoke-detector-alarm.12",
        rule="smoke-detector-alarm",
        dev="det-3",
        severity=Severity.CRITICAL,
        state=AlarmState.ACTIVE,
        value=True,
        ts=T0 + 62.3,
        msg="Smoke alarm on det-3 (obscuration 2.61 %/m)",
        values={"smoke": 2.61, "temperature": 24.1},
        extra={
            "history": [{"state": "active", "ts": T0 + 62.3}],
            "gw": "someone-else",  # a known field in extra never overrides the real one
        },
    )
    payload = encode_alarm(AlarmMessage(GW, STREAM, 117, event))
    validate(Channel.ALARMS, payload)
    decoded = decode_alarm(payload)
    assert decoded.gw == GW
    assert decoded.event.values == {"smoke": 2.61, "temperature": 24.1}
    assert decoded.event.extra == {"history": [{"state": "active", "ts": T0 + 62.3}]}
    assert decoded.event == dataclasses.replace(event, extra=decoded.event.extra)  # round trip
    alarm = decoded.event
    assert (decoded.seq, alarm.severity, alarm.state, alarm.value) == (
        117,
        "critical",
        "active",
        True,
    )


def test_every_field_of_the_alarm_event_is_in_the_schema_and_round_trips() -> None:
    props = load_schema(Channel.ALARMS)["properties"]
    names = {f.name for f in dataclasses.fields(AlarmEvent)} - {"extra"}
    assert names | {"gw", "stream", "seq"} == set(props)
    report = ActionReport(
        "on_active", (ActionResult(ActionWrite("det-3", "siren", True), False, "timeout"),)
    )
    kinds = [
        {"occurrence": 2, "since": T0, "values": {"smoke": 2.6, "temp": None}, "latched": True},
        {"occurrence": 1, "since": None, "retriggers": 1, "retrigger": True, "acked_by": "li"},
        {"reannounced": 3, "acknowledged": True, "action": report},
        {"state": AlarmState.SHELVED, "shelved_until": T0 + 60, "reason": "x", "shelved_by": "li"},
        {"state": AlarmState.UNSHELVED, "reason": "shelving expired", "current": "active"},
        {"diagnostic": "chattering", "of": "det-3/smoke.alarm", "suppressed": {"r": 4}},
        {"dropped": DroppedRows(1, 5, 5, T0, T0 + 4, "cap")},
        {"corrupt": CorruptOutbox(None, "outbox.db.corrupt-x", "malformed")},
    ]
    for kind in kinds:
        event = AlarmEvent(
            **{
                "id": "det-3/smoke.alarm",
                "rule": "smoke.alarm",
                "dev": "det-3",
                "severity": Severity.CRITICAL,
                "state": AlarmState.ACTIVE,
                "value": 2.6,
                "ts": T0,
                "msg": "m",
                **kind,
            }
        )
        payload = encode_alarm(AlarmMessage(GW, STREAM, 9, event))
        validate(Channel.ALARMS, payload)
        decoded = decode_alarm(payload)
        assert decoded == AlarmMessage(GW, STREAM, 9, event), kind
        assert decoded.event.extra == {}
        assert decode_alarm_body(encode_alarm_body(event)) == event


def test_a_known_field_in_a_shape_this_version_does_not_know_is_kept_as_it_came() -> None:
    odd = {"occurrence": "2", "dropped": {"first": 1}, "action": [1]}
    decoded = decode_alarm(alarm(**odd))
    assert decoded.event.occurrence is None and decoded.event.dropped is None
    assert decoded.event.extra == odd
    assert {k: v for k, v in json.loads(encode_alarm(decoded)).items() if k in odd} == odd


def test_alarm_with_nan_value_travels_as_null() -> None:
    event = AlarmEvent(
        id="a",
        rule="r",
        dev="det-3",
        severity=Severity.MAJOR,
        state=AlarmState.CLEARED,
        value=math.nan,
        ts=T0,
        msg="m",
    )
    payload = encode_alarm(AlarmMessage(GW, STREAM, 1, event))
    validate(Channel.ALARMS, payload)
    assert decode_alarm(payload).event.value is None


def online_state() -> bytes:
    return encode_state(
        GW,
        True,
        agent_version="0.1.0",
        config_rev="2024-06-11.3",
        started=T0 - 210.0,
        site="Yuyuan Road 1208, basement B1",
        tags={"district": "jingan", "kind": "smoke"},
    )


def test_encoded_states_validate() -> None:
    will = encode_state(GW, False)
    shutdown = encode_state(
        GW, False, agent_version="0.1.0", config_rev="2024-06-11.3", started=T0, stopped=T0 + 9.5
    )
    for payload in (online_state(), will, shutdown):
        validate(Channel.STATE, payload)
    assert decode_state(will) == {"gw": GW, "online": False}
    assert decode_state(online_state())["tags"] == {"district": "jingan", "kind": "smoke"}


def test_encoded_ack_validates_and_round_trips() -> None:
    ack = Ack(
        STREAM,
        telemetry=merge_ranges([(48001, 48100), (48101, 48215), (48300, 48310), (48305, 48320)]),
        alarms=merge_ranges([(117, 117)]),
    )
    assert ack.telemetry == ((48001, 48215), (48300, 48320))
    payload = encode_ack(ack)
    validate(Channel.ACK, payload)
    assert decode_ack(payload) == ack
    empty = encode_ack(Ack(STREAM))
    validate(Channel.ACK, empty)
    assert decode_ack(b'{"stream": "s"}') == Ack("s")


HOSTILE_ACKS = [
    pytest.param({"stream": "s", "telemetry": [[1, 2**63]]}, "telemetry", id="past-int64"),
    pytest.param({"stream": "s", "alarms": [[2**64, 2**64]]}, "alarms", id="uint64"),
    pytest.param({"stream": "s", "telemetry": [[0, 3]]}, "telemetry", id="zero"),
    pytest.param({"stream": "s", "telemetry": [[-5, 3]]}, "telemetry", id="negative"),
    pytest.param(
        {"stream": "s", "telemetry": [[1, 1]] * (ACK_RANGES_MAX + 1)}, "ranges", id="too-many"
    ),
    pytest.param({"stream": "", "telemetry": [[1, 2]]}, "stream", id="empty-stream"),
    pytest.param({"stream": "a/b", "telemetry": [[1, 2]]}, "stream", id="slash-in-stream"),
    pytest.param({"stream": "x" * 129}, "stream", id="long-stream"),
    pytest.param({"stream": "s\u0000"}, "stream", id="nul-in-stream"),
]


@pytest.mark.parametrize(("ack", "message"), HOSTILE_ACKS)
def test_decode_ack_range_checks_like_the_schema(ack: dict[str, Any], message: str) -> None:
    """Seqs within SQLite's signed 64 bits and >= 1, a bounded number of ranges, a stream id
    of the contract's form: the decoder and the published schema reject the same acks."""
    payload = json.dumps(ack).encode()
    with pytest.raises(PayloadError, match=message):
        decode_ack(payload)
    assert list(Draft202012Validator(load_schema(Channel.ACK)).iter_errors(ack))


def test_decode_ack_takes_the_edges_of_the_range() -> None:
    largest = [[1, 2**63 - 1], [2**63 - 1, 2**63 - 1]]
    ack = {"stream": "a." + "b" * 124 + "_-", "telemetry": largest, "alarms": [[1, 1]] * 16384}
    payload = json.dumps(ack).encode()
    validate(Channel.ACK, payload)
    decoded = decode_ack(payload)
    assert decoded.telemetry == ((1, 2**63 - 1), (2**63 - 1, 2**63 - 1))
    assert len(decoded.alarms) == ACK_RANGES_MAX


def test_encoded_health_validates() -> None:
    payload = encode_health(
        GW,
        T0,
        outbox={"depth": 0, "alarms_depth": 0, "oldest_age_s": None, "bytes": 24576},
        dropped={"telemetry": 12},
        devices={
            "det-3": {"link": "up", "reason": None, "polls": 270, "overruns": 1, "errors": 0},
            "det-7": {"link": "unknown", "reason": None, "polls": 0, "overruns": 0, "errors": 0},
        },
        cpu_percent=3.2,
        mem_rss_mb=41.7,
        disk_free_mb=5120.4,
        uplink={"connected": True, "reconnects": 0, "inflight_batches": 0},
        load_avg=0.3,  # health grows: fields the schema does not know yet are allowed
    )
    validate(Channel.HEALTH, payload)
    assert decode_health(payload)["dropped"] == {"telemetry": 12}


# --- decoders reject malformed payloads ----------------------------------------------------


def telemetry(**override: Any) -> bytes:
    reading = {"dev": "det-3", "pt": "smoke", "v": 0.4, "u": "%/m", "q": "good", "ts": T0}
    obj = {"gw": GW, "stream": STREAM, "seq_first": 5, "seq_last": 6, "readings": [reading] * 2}
    return as_bytes({**obj, **override})


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (telemetry(seq_last=7), "seq_first..seq_last"),
        (telemetry(seq_last=5), "seq_first..seq_last"),
        (telemetry(seq_first=0, seq_last=1), "seq_first..seq_last"),
        (telemetry(seq_first=True), "seq_first"),
        (telemetry(stream=None), "stream"),
        (
            telemetry(readings=[{"dev": "det-3", "pt": "smoke", "q": "ok", "ts": T0}] * 2),
            "readings[0]",
        ),
        (telemetry(readings=[{"dev": "det-3", "pt": "smoke", "q": "good"}] * 2), "readings[0]"),
        (telemetry(readings=["det-3", "smoke"]), "readings[0]"),
        (b'{"gw": "jingan-0001", "stream"', "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b"[]", "JSON object"),
    ],
)
def test_decode_telemetry_rejects(payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message.replace("[", r"\[").replace("]", r"\]")):
        decode_telemetry(payload)


def alarm(**override: Any) -> bytes:
    return as_bytes({**load_schema(Channel.ALARMS)["examples"][0], **override})


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (alarm(severity="fatal"), "severity"),
        (alarm(state="open"), "state"),
        (alarm(msg=None), "msg"),
        (alarm(seq="117"), "seq"),
        (b"not json", "not JSON"),
    ],
)
def test_decode_alarm_rejects(payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode_alarm(payload)


@pytest.mark.parametrize(
    ("decode", "payload", "message"),
    [
        (decode_state, b'{"gw": "jingan-0001"}', "online"),
        (decode_state, b'{"gw": "jingan-0001", "online": "false"}', "online"),
        (decode_state, b"", "not JSON"),
        (decode_health, b'{"gw": "jingan-0001"}', "ts"),
        (decode_health, b'{"gw": "jingan-0001", "ts": "now"}', "ts"),
        (decode_ack, b'{"stream": "s", "telemetry": [[9, 3]]}', "telemetry"),
        (decode_ack, b'{"stream": "s", "alarms": [[1, 2], [7, 6]]}', "alarms"),
        (decode_ack, b'{"stream": "s", "telemetry": [[1, 2, 3]]}', "telemetry"),
        (decode_ack, b'{"stream": "s", "telemetry": [["1", 2]]}', "telemetry"),
        (decode_ack, b'{"stream": "s", "telemetry": [[true, 2]]}', "telemetry"),
        (decode_ack, b'{"stream": "s", "telemetry": [1, 2]}', "telemetry"),
        (decode_ack, b'{"stream": "s", "telemetry": {"1": 2}}', "telemetry"),
        (decode_ack, b'{"telemetry": [[1, 2]]}', "stream"),
        (decode_ack, b"\x00", "not JSON"),
    ],
)
def test_decode_rejects(decode: Any, payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode(payload)


@pytest.mark.parametrize(
    ("decode", "payload"),
    [
        (decode_health, b'{"gw": "jingan-0001", "ts": true}'),
        (decode_alarm, alarm(ts=True)),
        (
            decode_telemetry,
            telemetry(readings=[{"dev": "d", "pt": "p", "q": "good", "ts": True}] * 2),
        ),
    ],
)
def test_decoders_reject_a_bool_timestamp(decode: Any, payload: bytes) -> None:
    with pytest.raises(PayloadError):
        decode(payload)


def test_empty_batch_is_not_a_batch() -> None:
    with pytest.raises(ValueError, match="at least one reading"):
        encode_telemetry(GW, STREAM, 1, [])
    empty = b'{"gw":"g","stream":"s","seq_first":1,"seq_last":0,"readings":[]}'
    with pytest.raises(PayloadError):
        decode_telemetry(empty)


# --- topics --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "gateway",
    ["", "a+b", "+", "#", "gw/#", "a/b", "/", "a b", " jingan", "jingan ", "a\tb", "-gw", "x" * 65],
)
def test_topics_refuse_gateway_ids_that_are_not_one_plain_level(gateway: str) -> None:
    with pytest.raises(TopicError):
        check_gateway_id(gateway)
    for channel in Channel:
        with pytest.raises(TopicError):
            Topics().gw(gateway, channel)


def test_topics_refuse_a_gateway_id_with_a_trailing_newline() -> None:
    with pytest.raises(TopicError):
        check_gateway_id("jingan-0001\n")


@pytest.mark.parametrize("gateway", [GW, "a", "x" * 64, "gw_1.2", "0"])
def test_topics_accept_plain_gateway_ids(gateway: str) -> None:
    assert check_gateway_id(gateway) == gateway
    assert Topics().gw(gateway, Channel.STATE) == f"edgefleet/v1/gw/{gateway}/state"


@pytest.mark.parametrize("root", [DEFAULT_ROOT, "city/sh/edgefleet/v1", "edgefleet"])
@pytest.mark.parametrize("channel", list(Channel))
def test_topics_parse_round_trips(root: str, channel: Channel) -> None:
    topics = Topics(root)
    topic = topics.gw(GW, channel)
    assert topic == f"{root}/gw/{GW}/{channel.value}"
    assert topics.parse(topic) == (GW, channel)
    assert topics.pattern(channel) == f"{root}/gw/+/{channel.value}"


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/v2/gw/jingan-0001/telemetry",
        "edgefleet/v1/gw/jingan-0001/telemetry/extra",
        "edgefleet/v1/gw/jingan-0001/reply",
        "edgefleet/v1/gw/jingan-0001",
        "edgefleet/v1/gw/+/alarms",
        "edgefleet/v1/gw//alarms",
        "edgefleet/v1/gwx/jingan-0001/alarms",
        "prefix/edgefleet/v1/gw/jingan-0001/alarms",
    ],
)
def test_topics_parse_ignores_other_topics(topic: str) -> None:
    assert Topics().parse(topic) is None


@pytest.mark.parametrize("root", ["", "a/+", "#", "edgefleet/v1/", "edge fleet", "a/#/b"])
def test_topics_refuse_roots_with_wildcards_or_empty_levels(root: str) -> None:
    with pytest.raises(TopicError):
        Topics(root)


@pytest.mark.parametrize("root", ["edgefleet//v1", "/edgefleet/v1"])
def test_topics_refuse_roots_with_empty_levels(root: str) -> None:
    with pytest.raises(TopicError):
        Topics(root)


# --- the AsyncAPI document -----------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text(encoding="utf-8"))
    return doc


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def payload_schema(doc: dict[str, Any], message_ref: str) -> tuple[str, Path]:
    message = resolve(doc, message_ref)
    if "$ref" in message:
        message = resolve(doc, message["$ref"])
    payload = message["payload"]
    return payload["schemaFormat"], (ASYNCAPI.parent / payload["schema"]["$ref"]).resolve()


def test_asyncapi_is_3_0_0_over_mqtt_5(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["asyncapi"] == "3.0.0"
    (server,) = asyncapi["servers"].values()
    assert (server["protocol"], str(server["protocolVersion"])) == ("mqtt", "5")


def test_asyncapi_refs_resolve(asyncapi: dict[str, Any]) -> None:
    refs = [node["$ref"] for _, node in walk(asyncapi) if isinstance(node, dict) and "$ref" in node]
    external = {ref for ref in refs if not ref.startswith("#")}
    for ref in refs:
        if ref.startswith("#"):
            assert resolve(asyncapi, ref) is not None, ref
    files = {(ASYNCAPI.parent / ref).resolve() for ref in external}
    assert all(f.is_file() for f in files), sorted(map(str, files))
    assert files == {(SCHEMA_DIR / name).resolve() for name in SCHEMA_FILES.values()}


@pytest.mark.parametrize("channel", list(Channel))
def test_asyncapi_describes_every_channel(asyncapi: dict[str, Any], channel: Channel) -> None:
    described = asyncapi["channels"][channel.value]
    address = described["address"]
    assert address == f"{{root}}/gw/{{gw}}/{channel.value}"
    concrete = address.replace("{root}", DEFAULT_ROOT).replace("{gw}", GW)
    assert Topics().parse(concrete) == (GW, channel)
    assert set(described["parameters"]) == {"root", "gw"}
    for message in described["messages"].values():
        fmt, path = payload_schema(asyncapi, message["$ref"])
        assert fmt == "application/schema+json;version=draft-07"
        assert path == (SCHEMA_DIR / SCHEMA_FILES[channel]).resolve()


def test_asyncapi_root_parameter_defaults_to_the_code(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["components"]["parameters"]["root"]["default"] == DEFAULT_ROOT


@pytest.mark.parametrize(
    ("channel", "action", "qos", "retain"),
    [
        (Channel.TELEMETRY, "send", 1, False),
        (Channel.ALARMS, "send", 1, False),
        (Channel.STATE, "send", 1, True),
        (Channel.HEALTH, "send", 0, False),
        (Channel.ACK, "receive", 1, False),
        (Channel.CMD, "receive", 1, False),
    ],
)
def test_asyncapi_operations_follow_the_contract_table(
    asyncapi: dict[str, Any], channel: Channel, action: str, qos: int, retain: bool
) -> None:
    (operation,) = [
        op
        for op in asyncapi["operations"].values()
        if op["channel"]["$ref"] == f"#/channels/{channel.value}"
    ]
    assert operation["action"] == action
    mqtt = operation["bindings"]["mqtt"]
    assert (mqtt["qos"], mqtt["retain"]) == (qos, retain)


def test_asyncapi_command_replies_on_the_response_topic(asyncapi: dict[str, Any]) -> None:
    (operation,) = [
        op for op in asyncapi["operations"].values() if op["channel"]["$ref"] == "#/channels/cmd"
    ]
    reply = operation["reply"]
    assert "responseTopic" in reply["address"]["location"]
    (message,) = reply["messages"]
    _, path = payload_schema(asyncapi, message["$ref"])
    assert path == (SCHEMA_DIR / SCHEMA_FILES[CMD_REPLY]).resolve()
    command = asyncapi["components"]["messages"]["command"]
    assert set(command["bindings"]["mqtt"]) >= {"responseTopic", "correlationData"}


def test_asyncapi_last_will_is_the_codecs_offline_state(asyncapi: dict[str, Any]) -> None:
    will = asyncapi["servers"]["central"]["bindings"]["mqtt"]["lastWill"]
    assert (will["qos"], will["retain"]) == (1, True)
    assert will["topic"].replace("{gw}", GW) == Topics().gw(GW, Channel.STATE)
    message = will["message"].replace("{gw}", GW).encode()
    assert json.loads(message) == json.loads(encode_state(GW, False))
    validate(Channel.STATE, message)


def test_asyncapi_message_examples_validate(asyncapi: dict[str, Any]) -> None:
    checked = 0
    for key, message in asyncapi["components"]["messages"].items():
        _, path = payload_schema(asyncapi, f"#/components/messages/{key}")
        (name,) = [n for n, f in SCHEMA_FILES.items() if (SCHEMA_DIR / f).resolve() == path]
        for example in message.get("examples", []):
            validate(name, as_bytes(example["payload"]))
            checked += 1
    assert checked >= 5


# --- the rows a rejected message names (the center acks them) --------------------------------


def _tel(**kw: Any) -> bytes:
    obj = {"gw": "g", "stream": "s", "seq_first": 4, "seq_last": 5, "readings": [{}, {}]}
    return json.dumps({**obj, **kw}).encode()


def _alarm(**kw: Any) -> bytes:
    return json.dumps({"gw": "g", "stream": "s", **kw}).encode()


@pytest.mark.parametrize(
    ("payload", "alarm", "expected"),
    [
        (_tel(), False, NamedRows("g", "s", 4, 5)),
        (_tel(readings=[[1], "x"]), False, NamedRows("g", "s", 4, 5)),  # bad inside, count ok
        (_tel(seq_last=9), False, None),  # the count does not match the range
        (_tel(seq_first=0, seq_last=1), False, None),
        (_tel(seq_first=2**63, seq_last=2**63 + 1), False, None),
        (_tel(seq_first=True), False, None),
        (_tel(stream=""), False, None),
        (_tel(stream="\ud800"), False, None),  # nothing one could store or ack
        (_tel(readings={}), False, None),
        (b"\xff", False, None),
        (b"[" * 100_000, False, None),  # deeper than the JSON decoder goes
        (
            json.dumps({"gw": "g", "stream": "s", "seq": 7}).encode(),
            True,
            NamedRows("g", "s", 7, 7),
        ),
        (json.dumps({"gw": "g", "stream": "s", "seq": 7.0}).encode(), True, None),
    ],
)
def test_named_rows_only_beyond_doubt(payload: bytes, alarm: bool, expected: object) -> None:
    assert named_rows(payload, alarm=alarm) == expected


@pytest.mark.parametrize("stream", ["", "a\x1b[31m\nb", "x" * 129, "ok/../+#"])
def test_a_stream_id_the_center_could_not_ack_is_refused_in_batches_and_alarms(
    stream: str,
) -> None:
    """An ack must carry a stream of 1-128 of ``A-Za-z0-9._-`` or the gateway refuses it:
    a batch or an alarm event with any other stream was stored and could never be acked
    (found by an attacker probe against a running center)."""
    batch = {
        "gw": "gw-1",
        "stream": stream,
        "seq_first": 1,
        "seq_last": 1,
        "readings": [{"dev": "d", "pt": "p", "ts": time.time(), "v": 1, "q": "good"}],
    }
    with pytest.raises(PayloadError, match="field 'stream' must be 1 to 128"):
        decode_telemetry(json.dumps(batch).encode())
    assert named_rows(json.dumps(batch).encode(), alarm=False) is None
    good = decode_telemetry(json.dumps(batch | {"stream": "s-" + "a" * 126}).encode())
    assert good.stream == "s-" + "a" * 126
