"""The round logic (``central.rounds``) against the in-memory store: what is stored, what
is PUBACKed on which lane, what is acked per (gateway, stream), and what a fault of the
store or of one message does to the rest of the round."""

from __future__ import annotations

import json
from typing import Any

import pytest

from central.inbox import Lane
from central.rounds import store_round
from central.store.errors import MessageRejected, StoreUnavailable
from central.store.memory import MemoryStore
from edge_agent.contract import Ack, Channel, PayloadError, Topics, decode_telemetry
from mqttlink.session import Message

TOPICS = Topics()
T0 = 1_795_407_914.5


def reading(v: Any = 1.5) -> dict[str, Any]:
    return {"dev": "m-1", "pt": "energy", "v": v, "u": "kWh", "q": "good", "ts": T0}


def batch(gw: str, seq: int, n: int = 1, *, payload_gw: str | None = None) -> Message:
    body = {
        "gw": payload_gw or gw,
        "stream": f"s-{gw}",
        "seq_first": seq,
        "seq_last": seq + n - 1,
        "readings": [reading(float(seq + i)) for i in range(n)],
    }
    return Message(TOPICS.gw(gw, Channel.TELEMETRY), json.dumps(body).encode(), qos=1)


def alarm(gw: str, seq: int) -> Message:
    body = {
        "gw": gw,
        "stream": f"s-{gw}",
        "seq": seq,
        "id": "m-1/over",
        "rule": "over",
        "dev": "m-1",
        "severity": "major",
        "state": "active",
        "value": 3.0,
        "ts": T0,
        "msg": "over",
    }
    return Message(TOPICS.gw(gw, Channel.ALARMS), json.dumps(body).encode(), qos=1)


def ack(stream: str, telemetry: list[tuple[int, int]], alarms: list[tuple[int, int]]) -> Ack:
    return Ack(stream, telemetry=tuple(telemetry), alarms=tuple(alarms))


def raw(gw: str, channel: Channel, payload: bytes) -> Message:
    return Message(TOPICS.gw(gw, channel), payload, qos=1)


def test_a_round_is_stored_committed_and_acked_merged_per_stream() -> None:
    store = MemoryStore()
    msgs = [batch("gw-a", 1, 2), batch("gw-b", 1), batch("gw-a", 3, 3)]
    out = store_round(store, TOPICS, msgs)
    assert store.commits == 1
    assert store.sequence_keys("gw-a") == {("s-gw-a", s) for s in range(1, 6)}
    assert store.count_readings() == 6
    assert out.puback == [(Lane.DATA, m) for m in msgs]
    assert out.acks == [
        ("gw-a", ack("s-gw-a", telemetry=[(1, 5)], alarms=[])),
        ("gw-b", ack("s-gw-b", telemetry=[(1, 1)], alarms=[])),
    ]
    assert (out.counts.readings_stored, out.counts.duplicates) == (6, 0)
    assert out.rejected == [] and out.rest == []
    assert set(store.contents.last_seen) == {"gw-a", "gw-b"}


def test_duplicates_are_stored_once_and_acked_again() -> None:
    store = MemoryStore()
    store_round(store, TOPICS, [batch("gw-a", 1, 3)])
    out = store_round(store, TOPICS, [batch("gw-a", 2, 3), batch("gw-a", 2, 3)])
    assert store.count_readings() == 4  # seq 1..4
    assert (out.counts.readings_stored, out.counts.duplicates) == (1, 5)
    assert out.acks == [("gw-a", ack("s-gw-a", telemetry=[(2, 4)], alarms=[]))]
    assert out.messages == 2


def test_alarms_waiting_cut_a_telemetry_round_short_and_join_its_commit() -> None:
    store = MemoryStore()
    msgs = [batch("gw-a", 1), batch("gw-a", 2), batch("gw-a", 3)]
    waiting = [[], [alarm("gw-b", 7)]]  # none before the first message, one before the 2nd
    asked = 0

    def alarms_now() -> list[Message]:
        nonlocal asked
        asked += 1
        return waiting.pop(0) if waiting else []

    out = store_round(store, TOPICS, msgs, Lane.DATA, alarms_now)
    assert asked == 2
    assert store.commits == 1
    assert out.puback == [(Lane.DATA, msgs[0]), (Lane.ALARMS, alarm("gw-b", 7))]
    assert out.rest == msgs[1:]  # not begun: for put_back
    assert store.sequence_keys("gw-a") == {("s-gw-a", 1)}
    assert set(store.contents.alarm_events) == {("gw-b", "s-gw-b", 7)}
    assert out.counts.alarms_stored == 1
    assert out.acks == [
        ("gw-a", ack("s-gw-a", telemetry=[(1, 1)], alarms=[])),
        ("gw-b", ack("s-gw-b", telemetry=[], alarms=[(7, 7)])),
    ]


def test_an_alarm_round_is_never_cut_short() -> None:
    store = MemoryStore()

    def alarms_now() -> list[Message]:
        raise AssertionError("an alarm round must not ask for alarms")

    msgs = [alarm("gw-a", 1), alarm("gw-a", 2), alarm("gw-a", 2)]
    out = store_round(store, TOPICS, msgs, Lane.ALARMS, alarms_now)
    assert out.puback == [(Lane.ALARMS, m) for m in msgs]
    assert out.counts.alarms_stored == 2  # the third is a duplicate
    assert out.acks == [("gw-a", ack("s-gw-a", telemetry=[], alarms=[(1, 2)]))]


def test_a_rejected_message_is_rejected_alone_kept_pubacked_and_acked() -> None:
    store = MemoryStore()
    store.inject(MessageRejected("OverflowError: too big"), write="insert_telemetry", seq=5)
    msgs = [batch("gw-a", 1), batch("gw-a", 5, 2), batch("gw-a", 7)]
    out = store_round(store, TOPICS, msgs)
    assert store.sequence_keys("gw-a") == {("s-gw-a", 1), ("s-gw-a", 7)}
    assert [(r.gateway, r.channel, r.why) for r in out.rejected] == [
        ("gw-a", Channel.TELEMETRY, "OverflowError: too big")
    ]
    (letter,) = store.contents.dead_letters.values()
    assert (letter.gateway, letter.error, letter.size) == (
        "gw-a",
        "OverflowError: too big",
        len(msgs[1].payload),
    )
    assert letter.rows is not None and (letter.rows.first, letter.rows.last) == (5, 6)
    assert out.puback == [(Lane.DATA, m) for m in msgs]
    # its rows are named beyond doubt: acked, so that the gateway does not resend them
    assert out.acks == [("gw-a", ack("s-gw-a", telemetry=[(1, 1), (5, 7)], alarms=[]))]
    assert out.counts.readings_stored == 2


def test_a_message_naming_no_rows_is_pubacked_but_not_acked() -> None:
    store = MemoryStore()
    garbage = raw("gw-a", Channel.TELEMETRY, b"{not json")
    out = store_round(store, TOPICS, [garbage])
    assert out.puback == [(Lane.DATA, garbage)]
    assert out.acks == []
    assert len(out.rejected) == 1 and out.rejected[0].channel is Channel.TELEMETRY
    (letter,) = store.contents.dead_letters.values()
    assert letter.rows is None and letter.head == b"{not json"
    assert "gw-a" not in store.contents.last_seen  # nothing of it was stored


def test_another_gateways_rows_are_never_acked() -> None:
    store = MemoryStore()
    forged = batch("gw-a", 1, payload_gw="gw-b")  # on gw-a's topic, says gw-b
    out = store_round(store, TOPICS, [forged])
    assert out.acks == []
    assert store.count_readings() == 0
    assert "payload says gateway 'gw-b'" in out.rejected[0].why
    assert out.puback == [(Lane.DATA, forged)]
    (letter,) = store.contents.dead_letters.values()
    assert letter.gateway == "gw-a" and letter.rows is None


def test_a_dead_letter_the_store_cannot_keep_is_still_pubacked_but_not_acked() -> None:
    store = MemoryStore()
    store.inject(MessageRejected("no"), write="insert_telemetry")
    store.inject(MessageRejected("no room"), write="insert_rejected")
    msg = batch("gw-a", 1)
    out = store_round(store, TOPICS, [msg])
    assert out.puback == [(Lane.DATA, msg)]
    assert out.acks == [] and len(out.rejected) == 1
    assert store.contents.dead_letters == {}


@pytest.mark.parametrize("where", ["insert_telemetry", "update_health", "seen", "commit"])
def test_a_store_fault_rolls_everything_back_and_acks_nothing(where: str) -> None:
    store = MemoryStore()
    store.inject(StoreUnavailable("disk full"), write=where)
    health = raw("gw-b", Channel.HEALTH, json.dumps({"gw": "gw-b", "ts": T0}).encode())
    msgs = [batch("gw-a", 1), health, batch("gw-a", 2)]
    with pytest.raises(StoreUnavailable, match="disk full"):
        store_round(store, TOPICS, msgs)
    assert store.commits == 0
    assert store.count_readings() == 0
    assert store.contents.health == {} and store.contents.last_seen == {}
    out = store_round(store, TOPICS, msgs)  # the next try (the fault is spent) stores all
    assert store.count_readings() == 2 and out.messages == 3
    assert "gw-b" in store.contents.health


def test_a_store_fault_while_keeping_a_dead_letter_fails_the_round() -> None:
    store = MemoryStore()
    store.inject(StoreUnavailable("I/O error"), write="insert_rejected")
    with pytest.raises(StoreUnavailable):
        store_round(store, TOPICS, [batch("gw-a", 1), raw("gw-a", Channel.TELEMETRY, b"x")])
    assert store.commits == 0 and store.count_readings() == 0


def test_state_and_health_are_stored_and_other_topics_only_pubacked() -> None:
    store = MemoryStore()
    state = raw("gw-a", Channel.STATE, json.dumps({"gw": "gw-a", "online": True}).encode())
    cleared = raw("gw-c", Channel.STATE, b"")  # a decommissioned gateway's retained state
    stray = Message("elsewhere/topic", b"hello", qos=1)
    out = store_round(store, TOPICS, [state, cleared, stray])
    assert store.contents.states["gw-a"]["online"] is True
    assert "gw-c" not in store.contents.states
    assert out.puback == [(Lane.DATA, state), (Lane.DATA, cleared), (Lane.DATA, stray)]
    assert out.acks == [] and out.rejected == []
    assert set(store.contents.last_seen) == {"gw-a", "gw-c"}


def test_the_memory_store_undoes_a_failed_message_alone() -> None:
    store = MemoryStore()
    one = decode_telemetry(batch("gw-a", 1).payload)
    two = decode_telemetry(batch("gw-a", 2).payload)
    with store.round() as rnd:
        rnd.insert_telemetry(one)
        with pytest.raises(PayloadError), rnd.message():
            rnd.insert_telemetry(two)
            raise PayloadError("bad after the write")
        assert rnd.counts.readings_stored == 1
    assert store.sequence_keys("gw-a") == {("s-gw-a", 1)}
    with pytest.raises(RuntimeError), store.round() as rnd:
        rnd.insert_telemetry(two)
        raise RuntimeError("the round fails")
    assert store.sequence_keys("gw-a") == {("s-gw-a", 1)}  # the round was not kept


def test_the_round_lists_for_the_feed_what_it_stored_and_nothing_else() -> None:
    """New alarm events and every state stored, in order; not an alarm the store had
    already, nor one rejected, nor a cleared retained state."""
    store = MemoryStore()
    store_round(store, TOPICS, [alarm("gw-a", 1)], Lane.ALARMS)
    state = raw("gw-b", Channel.STATE, json.dumps({"gw": "gw-b", "online": False}).encode())
    bad = alarm("gw-c", 1)
    bad = Message(bad.topic, bad.payload.replace(b'"major"', b'"dire"'), qos=1)
    msgs = [alarm("gw-a", 1), alarm("gw-a", 2), bad, state, raw("gw-d", Channel.STATE, b"")]
    out = store_round(store, TOPICS, msgs)
    assert [a.to_json() for a in out.alarms] == [
        {"gateway": "gw-a", "alarm_id": "m-1/over", "severity": "major", "state": "active"}
    ]
    assert [g.to_json() for g in out.gateways] == [{"gateway": "gw-b", "online": False}]
    assert len(out.rejected) == 1
    committed = out.committed()
    assert (committed.readings, committed.alarms, committed.gateways) == (
        0,
        out.alarms,
        out.gateways,
    )


# --- conflicts: a resent seq whose content differs from the stored one ---------------------


def forged(gw: str, seq: int, n: int = 1, v: float = 666.0) -> Message:
    """A batch of ``gw``'s stream and seqs with other values than the real one's."""
    body = json.loads(batch(gw, seq, n).payload)
    for r in body["readings"]:
        r["v"] = v
    return Message(TOPICS.gw(gw, Channel.TELEMETRY), json.dumps(body).encode(), qos=1)


def test_a_resend_that_differs_is_kept_whole_flagged_and_acked_not_a_duplicate() -> None:
    store = MemoryStore()
    store_round(store, TOPICS, [batch("gw-a", 1, 2), forged("gw-a", 3, 2)])  # ahead of the real
    real = batch("gw-a", 3, 4)  # 3, 4: taken by the forgery; 5, 6: new
    out = store_round(store, TOPICS, [real])
    assert store.commits == 3  # the round, then the unit of work keeping the conflict
    assert out.acks == [("gw-a", ack("s-gw-a", telemetry=[(3, 6)], alarms=[]))]
    assert out.puback == [(Lane.DATA, real)]
    assert (out.counts.readings_stored, out.counts.duplicates, out.counts.conflicts) == (2, 0, 2)
    (c,) = out.conflicts
    assert (c.gateway, c.stream, c.alarm, c.seqs) == ("gw-a", "s-gw-a", False, ((3, 4),))
    assert out.rejected == []  # not a message the store could not take: one to look at
    # the stored rows stay (the store cannot tell which is real); the new seqs are stored
    readings = store.contents.readings
    assert [readings[("gw-a", "s-gw-a", s)]["v"] for s in (3, 4, 5, 6)] == [666.0, 666.0, 5.0, 6.0]
    (letter,) = store.contents.dead_letters.values()
    assert letter.head == real.payload and letter.size == len(real.payload)  # whole
    assert letter.error.startswith("CONFLICT: telemetry seqs 3..4 of stream 's-gw-a' were ")
    assert letter.rows is not None and (letter.rows.first, letter.rows.last) == (3, 6)
    # sent again (its ack lost): the same dead letter counted again, acked again
    again = store_round(store, TOPICS, [real])
    assert again.acks == out.acks and len(again.conflicts) == 1
    assert [d.times for d in store.contents.dead_letters.values()] == [2]
    assert (again.counts.duplicates, again.counts.conflicts) == (2, 2)


def test_an_identical_resend_is_a_plain_duplicate_and_flags_nothing() -> None:
    store = MemoryStore()
    store_round(store, TOPICS, [batch("gw-a", 1, 3)])
    out = store_round(store, TOPICS, [batch("gw-a", 1, 3), batch("gw-a", 2, 3)])
    assert (out.counts.readings_stored, out.counts.duplicates, out.counts.conflicts) == (1, 5, 0)
    assert out.conflicts == [] and store.contents.dead_letters == {}
    assert store.commits == 2  # no second unit of work
    # the same within one round: a forgery and the real batch together, the first one wins
    out = store_round(store, TOPICS, [forged("gw-a", 10, 2), batch("gw-a", 10, 2)])
    assert [c.seqs for c in out.conflicts] == [((10, 11),)]
    assert out.acks == [("gw-a", ack("s-gw-a", telemetry=[(10, 11)], alarms=[]))]


def test_a_resent_alarm_event_with_other_fields_is_a_conflict_and_changes_nothing() -> None:
    store = MemoryStore()
    body = json.loads(alarm("gw-a", 1).payload) | {"severity": "warning", "state": "cleared"}
    forgery = Message(TOPICS.gw("gw-a", Channel.ALARMS), json.dumps(body).encode(), qos=1)
    store_round(store, TOPICS, [forgery], Lane.ALARMS)
    real = alarm("gw-a", 1)
    out = store_round(store, TOPICS, [real], Lane.ALARMS)
    assert out.acks == [("gw-a", ack("s-gw-a", telemetry=[], alarms=[(1, 1)]))]
    assert out.alarms == [] and out.counts.alarms_stored == 0
    assert [(c.alarm, c.seqs) for c in out.conflicts] == [(True, ((1, 1),))]
    (letter,) = store.contents.dead_letters.values()
    assert letter.head == real.payload
    assert letter.error.startswith("CONFLICT: alarm event seq 1 of stream 's-gw-a'")
    assert store.contents.alarms[("gw-a", "m-1/over")].event.severity == "warning"
    # the same event again (its key order changed, 3.0 spelt 3) is a plain duplicate
    same = json.dumps(dict(reversed(list(body.items()))) | {"value": 3}).encode()
    out = store_round(store, TOPICS, [raw("gw-a", Channel.ALARMS, same)], Lane.ALARMS)
    assert out.conflicts == [] and len(store.contents.dead_letters) == 1


def test_when_the_conflict_cannot_be_kept_nothing_is_acked_and_the_retry_finds_it() -> None:
    store = MemoryStore()
    store_round(store, TOPICS, [forged("gw-a", 1)])
    store.inject(StoreUnavailable("disk full"), write="insert_rejected")
    real = batch("gw-a", 1)
    with pytest.raises(StoreUnavailable, match="disk full"):
        store_round(store, TOPICS, [real])
    assert store.contents.dead_letters == {}
    out = store_round(store, TOPICS, [real])  # tried again: the stored forgery is still there
    assert len(out.conflicts) == 1 and len(store.contents.dead_letters) == 1
    assert out.acks == [("gw-a", ack("s-gw-a", telemetry=[(1, 1)], alarms=[]))]


def test_a_conflict_whose_dead_letter_cannot_be_kept_is_not_acked() -> None:
    store = MemoryStore()
    store_round(store, TOPICS, [forged("gw-a", 1), batch("gw-a", 5)])
    store.inject(MessageRejected("no room"), write="insert_rejected")
    out = store_round(store, TOPICS, [batch("gw-a", 1), batch("gw-a", 5)])  # 5: as it was
    assert len(out.conflicts) == 1 and store.contents.dead_letters == {}
    # the real seq 1 stays in the gateway's outbox (it may be its only copy); 5 is acked
    assert out.acks == [("gw-a", ack("s-gw-a", telemetry=[(5, 5)], alarms=[]))]
