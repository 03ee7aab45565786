"""The sender against a real outbox and a fake center that acks after a round trip.

No broker: the uplink is a stand-in that hands every message to the fake center at once,
and the center acks each telemetry batch ``RTT`` seconds later (a cellular round trip:
broker, center, commit, ack). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.base import Quality, Reading
from edge_agent import sender as sender_module
from edge_agent.contract import (
    Ack,
    AlarmEvent,
    AlarmState,
    ReadingEncoder,
    Severity,
    Topics,
    decode_alarm,
    decode_telemetry,
    encode_ack,
)
from edge_agent.contract.acks import sign_ack
from edge_agent.contract.limits import MESSAGE_MAX_BYTES, VALUE_TEXT_MAX
from edge_agent.contract.payloads import ACK_RANGES_MAX, SEQ_MAX
from edge_agent.outbox import AgentOutbox, DbThread, Lane, Outbox
from edge_agent.sender import Sender
from edge_agent.uplink import Inbound

T = TypeVar("T")
RTT = 0.5
BODY = json.dumps({"dev": "d", "pt": "p", "u": None, "v": 1, "q": "good", "ts": 1_795_407_914.5})


class FakeUplink:
    def __init__(self) -> None:
        self.connected = asyncio.Event()
        self.handlers: dict[str, Callable[[Inbound], None]] = {}
        self.ups: list[Callable[[], None]] = []
        self.downs: list[Callable[[], None]] = []
        self.on_publish: Callable[[str, bytes], None] = lambda topic, payload: None

    def subscribe(self, topic: str, handler: Callable[[Inbound], None]) -> None:
        self.handlers[topic] = handler

    def on_up(self, fn: Callable[[], None]) -> None:
        self.ups.append(fn)

    def on_down(self, fn: Callable[[], None]) -> None:
        self.downs.append(fn)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> bool:
        self.on_publish(topic, payload)
        return True

    def up(self) -> None:
        self.connected.set()
        for fn in self.ups:
            fn()


class GatedThread(DbThread):
    """The outbox thread, with a gate at its door and a count of the calls through it."""

    def __init__(self, rig: Rig) -> None:
        super().__init__()
        self._rig = rig

    async def run(self, fn: Callable[[], T]) -> T:
        rig = self._rig
        if rig.closed:
            rig.calls_after_close += 1
        rig.busy += 1
        try:
            await rig.gate.wait()
            return await super().run(fn)
        finally:
            rig.busy -= 1

    async def run_ungated(self, fn: Callable[[], T]) -> T:
        return await super().run(fn)


class Rig:
    """A real Sender and Outbox (on their own thread, as in the agent), a fake center."""

    def __init__(
        self,
        tmp: Path,
        *,
        window: int,
        batch_max: int,
        ack_timeout_s: float,
        key: Ed25519PrivateKey | None = None,
    ) -> None:
        """``key``: the center's; the sender trusts its public half, and acks are signed."""
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.thread = GatedThread(self)
        self.outbox = Outbox(tmp / "outbox.db", max_bytes=10**9)
        self.agent_outbox = AgentOutbox(self.outbox, self.thread)
        self.uplink = FakeUplink()
        self.uplink.on_publish = self._center
        self.gate = asyncio.Event()  # clear it to hold every outbox call at the door
        self.gate.set()
        self.busy = 0  # outbox calls started and not finished
        self.closed = False
        self.calls_after_close = 0
        self.auto_ack = True
        self.lose_acks_until = 0.0  # time.monotonic() before which the center's acks are lost
        self.stop_live = asyncio.Event()
        self.delivered: set[int] = set()  # telemetry seqs the center has acked
        self.published: list[tuple[int, int]] = []
        self.sender = Sender(
            gateway="gw-1",
            topics=Topics("edgefleet/v1"),
            telemetry=self.agent_outbox.telemetry,
            alarms=self.agent_outbox.alarms,
            uplink=self.uplink,
            batch_max=batch_max,
            window=window,
            ack_timeout_s=ack_timeout_s,
            keys=() if key is None else (key.public_key(),),
        )
        self.task: asyncio.Task[None] | None = None

    async def in_db(self, fn: Callable[[], T]) -> T:
        return await self.thread.run(fn)

    def start(self) -> None:
        self.task = asyncio.create_task(self.sender.run())
        self.uplink.up()

    async def stop_sender(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def close_outbox(self) -> None:
        self.closed = True
        await self.thread.run_ungated(self.outbox.close)

    def _center(self, topic: str, payload: bytes) -> None:
        if not topic.endswith("/telemetry"):
            return
        batch = decode_telemetry(payload)
        self.published.append((batch.seq_first, batch.seq_last))
        if not self.auto_ack:
            return
        if time.monotonic() < self.lose_acks_until:
            return
        self.loop.call_later(RTT, self.ack, batch.seq_first, batch.seq_last)

    def ack(self, first: int, last: int) -> None:
        self.delivered.update(range(first, last + 1))
        ack = Ack(self.outbox.stream_id, telemetry=((first, last),))
        payload = encode_ack(ack) if self.key is None else sign_ack(ack, "gw-1", self.key)
        self.sender.on_ack(Inbound(payload))

    async def commit(self, n: int) -> int:
        last = await self.in_db(lambda: self.outbox.append(Lane.TELEMETRY, rows(n)))
        self.sender.appended(Lane.TELEMETRY, last)
        return int(last)

    async def live(self, every_s: float, committed: list[int]) -> None:
        """One reading every ``every_s``, a device polled steadily, until ``stop_live``."""
        while not self.stop_live.is_set():
            committed.append(await self.commit(1))
            await asyncio.sleep(every_s)

    async def left_in_outbox(self) -> int:
        stats = await self.in_db(self.outbox.stats)
        return int(stats.depth)

    async def outbox_empties(self, timeout_s: float) -> bool:
        for _ in range(int(timeout_s / 0.05)):
            if await self.left_in_outbox() == 0:
                return True
            await asyncio.sleep(0.05)
        return await self.left_in_outbox() == 0


def rows(n: int) -> list[tuple[float, str]]:
    return [(time.time(), BODY)] * n


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(**kw: Any) -> Rig:
        rig = Rig(tmp_path / f"rig{len(rigs)}", **kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.gate.set()
        if rig.task is not None and not rig.task.done():
            await rig.stop_sender()
        if not rig.closed:
            await rig.close_outbox()
        rig.thread.shutdown()


async def wait_until(cond: Callable[[], bool], timeout_s: float, tick: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tick()
        if cond():
            return True
        await asyncio.sleep(0.01)
    return cond()


def covered(delivered: set[int], seqs: Iterable[int]) -> int:
    return sum(1 for s in seqs if s in delivered)


async def test_backlog_drains_beside_steady_live_data(make_rig: Callable[..., Rig]) -> None:
    """Live data fills far more than a quarter of the window (50 commits/s x 0.5 s round
    trip = 25 batches wanted in flight); the backlog still has its own quarter and drains."""
    rig = make_rig(window=16, batch_max=10, ack_timeout_s=30)
    backlog = range(1, 201)  # 20 batches waiting from an outage
    await rig.commit(len(backlog))
    rig.start()
    committed: list[int] = []
    live = asyncio.create_task(rig.live(0.02, committed))
    peak = {"total": 0, "backlog": 0}

    def sample() -> None:
        peak["total"] = max(peak["total"], rig.sender.inflight)
        peak["backlog"] = max(peak["backlog"], rig.sender.backlog_inflight)

    try:
        # 4 backlog batches per round trip: 20 batches in about 2.5 s
        drained = await wait_until(
            lambda: covered(rig.delivered, backlog) == len(backlog), 10, sample
        )
    finally:
        rig.stop_live.set()
        await live
    assert drained, (
        f"backlog starved behind live data: {covered(rig.delivered, backlog)}/{len(backlog)} "
        f"delivered in 10 s, {len(committed)} live readings committed"
    )
    assert covered(rig.delivered, committed) > 0  # live data kept flowing meanwhile
    assert peak["backlog"] <= 16 // 4
    assert peak["total"] <= 16 + 16 // 4
    assert rig.sender.resends == 0


async def test_lost_acks_resend_everything_while_live_data_flows(
    make_rig: Callable[..., Rig],
) -> None:
    """The center's acks are lost for the first 1.2 s: after the ack timeout everything
    unacked (the old backlog and a window of live data) is backlog again, and it must reach
    the center while live data keeps the window busy."""
    rig = make_rig(window=16, batch_max=10, ack_timeout_s=1.0)
    await rig.commit(100)
    rig.lose_acks_until = time.monotonic() + 1.2
    rig.start()
    committed: list[int] = []
    live = asyncio.create_task(rig.live(0.02, committed))
    try:
        await asyncio.sleep(1.2)
        unacked = range(1, max(committed) + 1)  # everything committed while acks were lost
        recovered = await wait_until(
            lambda: covered(rig.delivered, unacked) == len(unacked), 8, lambda: None
        )
        missing = sorted(set(unacked) - rig.delivered)
        assert recovered, (
            f"resends {rig.sender.resends}; {len(missing)} of {len(unacked)} rows never "
            f"delivered while live data flowed, first {missing[:5]}"
        )
        assert rig.sender.resends > 0
    finally:
        rig.stop_live.set()
        await live
    # once the device stops, every row ever committed reaches the center and leaves the outbox
    everything = set(range(1, max(committed) + 1))
    assert await wait_until(lambda: everything <= rig.delivered, 8, lambda: None)
    assert await rig.outbox_empties(5)


async def test_acked_rows_whose_delete_failed_are_sent_again(
    make_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk makes the delete of acked rows fail (Outbox.delete keeps them and
    returns 0): the sender must not forget them, and sends them again."""
    rig = make_rig(window=16, batch_max=10, ack_timeout_s=1.0)
    await rig.commit(30)
    real_delete = rig.outbox.delete
    failures = [0]

    def delete_disk_full(lane: Lane, ranges: Iterable[tuple[int, int]]) -> int:
        if failures[0] == 0:
            failures[0] += 1
            return 0  # what Outbox.delete does when even the ballast did not make room
        return real_delete(lane, ranges)

    monkeypatch.setattr(rig.outbox, "delete", delete_disk_full)
    rig.start()
    emptied = await rig.outbox_empties(6)
    assert failures[0] == 1
    assert emptied, (
        f"acked rows stuck in the outbox after a failed delete; resends {rig.sender.resends}"
    )
    assert rig.sender.resends >= 1
    # the batch whose delete failed went out twice; the others once
    assert len(rig.published) == 4


async def test_stopping_finishes_an_ack_under_way_before_the_outbox_closes(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig(window=16, batch_max=10, ack_timeout_s=30)
    rig.auto_ack = False
    await rig.commit(10)
    rig.start()
    assert await wait_until(lambda: bool(rig.published), 5, lambda: None)
    rig.gate.clear()  # the outbox thread is busy: the ack's delete waits
    rig.ack(1, 10)
    for _ in range(5):
        await asyncio.sleep(0)
    assert rig.busy == 1
    rig.loop.call_later(0.2, rig.gate.set)
    await rig.stop_sender()
    # the sender's stop path waited for the ack: nothing is left to touch the outbox
    assert rig.busy == 0
    assert await rig.left_in_outbox() == 0
    await rig.close_outbox()


async def test_an_ack_arriving_after_the_sender_stopped_never_touches_the_closed_outbox(
    make_rig: Callable[..., Rig],
) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    old_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        rig = make_rig(window=16, batch_max=10, ack_timeout_s=30)
        rig.auto_ack = False
        await rig.commit(10)
        rig.start()
        assert await wait_until(lambda: bool(rig.published), 5, lambda: None)
        await rig.stop_sender()
        rig.ack(1, 10)  # the paho thread delivers one more ack during the shutdown
        await rig.close_outbox()
        for _ in range(10):
            await asyncio.sleep(0.01)
        gc.collect()
        await asyncio.sleep(0.01)
    finally:
        loop.set_exception_handler(old_handler)
    assert rig.calls_after_close == 0
    assert not errors, [str(e.get("message")) + repr(e.get("exception")) for e in errors]


async def test_a_stop_that_meets_a_wake_up_is_never_swallowed(
    make_rig: Callable[..., Rig],
) -> None:
    """The sender is cancelled just as new rows wake it. Before Python 3.12,
    ``asyncio.wait_for`` returns the inner result and drops the cancellation when both land
    in the same loop turn, so the agent's sender ran on and its stop hung; every moment of
    the wake-up is tried, one sender each."""
    for turns in range(6):
        rig = make_rig(window=16, batch_max=10, ack_timeout_s=30)
        rig.auto_ack = False
        rig.start()
        await asyncio.sleep(0.1)  # the sender has found nothing to send and waits for work
        assert rig.task is not None and not rig.task.done()
        rig.sender.appended(Lane.TELEMETRY, 0)  # wakes it, with nothing new to send
        for _ in range(turns):
            await asyncio.sleep(0)
        rig.task.cancel()
        done, _ = await asyncio.wait({rig.task}, timeout=2)
        assert done, f"the sender ignored its stop {turns} loop turn(s) after a wake-up"


async def settle_acks(rig: Rig) -> None:
    """Let every ack under way reach the outbox and come back (bounded)."""
    for _ in range(200):
        if rig.busy == 0:
            break
        await asyncio.sleep(0.01)
    await rig.in_db(lambda: None)


async def test_an_ack_ending_at_the_largest_seq_deletes_and_repeats_without_overflow(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """2**63 - 1 is a seq SQLite holds: an ack ending there is valid, and applying it
    again (QoS 1 may deliver it twice) must not compute ``last + 1`` past SQLite's INTEGER
    (it logged ``OverflowError`` with a traceback)."""
    rig = make_rig(window=16, batch_max=10, ack_timeout_s=30)
    rig.auto_ack = False
    await rig.commit(10)
    rig.start()
    assert await wait_until(lambda: bool(rig.published), 5, lambda: None)
    ack = encode_ack(Ack(rig.outbox.stream_id, telemetry=((1, SEQ_MAX),)))
    for _ in range(2):
        rig.sender.on_ack(Inbound(ack))
        await settle_acks(rig)
    assert await rig.left_in_outbox() == 0
    assert rig.sender.acked == 10
    assert rig.sender.bad_acks == 0
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]


def hostile_acks(stream: str) -> list[bytes]:
    """Acks that break the contract, each naming rows 1..10 of the outbox somehow."""
    return [
        json.dumps({"stream": stream, "telemetry": [[1, SEQ_MAX + 1]]}).encode(),
        json.dumps({"stream": stream, "telemetry": [[0, 10]]}).encode(),
        json.dumps({"stream": stream, "telemetry": [[-(2**70), 10]]}).encode(),
        json.dumps({"stream": stream, "telemetry": [[10, 1]]}).encode(),
        json.dumps({"stream": stream, "alarms": [[1, 2**64]], "telemetry": [[1, 10]]}).encode(),
        json.dumps({"stream": stream, "telemetry": [[1, 1]] * (ACK_RANGES_MAX + 1)}).encode(),
        json.dumps({"stream": stream + "\n", "telemetry": [[1, 10]]}).encode(),
        json.dumps({"stream": "", "telemetry": [[1, 10]]}).encode(),
    ]


async def test_acks_that_break_the_contract_delete_nothing_are_counted_and_logged_once(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = make_rig(window=16, batch_max=10, ack_timeout_s=30)
    rig.auto_ack = False
    await rig.commit(10)
    rig.start()
    assert await wait_until(lambda: bool(rig.published), 5, lambda: None)
    bad = hostile_acks(rig.outbox.stream_id)
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):  # a peer that keeps at it
            for payload in bad:
                rig.sender.on_ack(Inbound(payload))
            await settle_acks(rig)
    assert await rig.left_in_outbox() == 10, "a bad ack deleted rows"
    assert rig.sender.acked == 0
    assert rig.sender.bad_acks == 3 * len(bad)
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert len(noisy) == 1, [r.getMessage() for r in noisy]
    assert noisy[0].levelno == logging.WARNING and not noisy[0].exc_info
    assert "ignoring an ack" in noisy[0].getMessage()
    # a good ack after all that is applied as ever
    rig.ack(1, 10)
    await settle_acks(rig)
    assert await rig.left_in_outbox() == 0


async def test_with_the_centers_key_only_its_acks_for_this_gateway_delete(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture
) -> None:
    """Unsigned, another key's, another gateway's, the center's altered: nothing deleted,
    each counted in ``rejected_acks`` (not ``bad_acks``: they keep the contract's shape),
    the first of each kind a warning; the center's own is applied."""
    center = Ed25519PrivateKey.generate()
    rig = make_rig(window=16, batch_max=10, ack_timeout_s=30, key=center)
    rig.auto_ack = False
    await rig.commit(10)
    rig.start()
    assert await wait_until(lambda: bool(rig.published), 5, lambda: None)
    everything = Ack(rig.outbox.stream_id, telemetry=((1, SEQ_MAX),))
    altered = json.loads(sign_ack(Ack(rig.outbox.stream_id, telemetry=((1, 1),)), "gw-1", center))
    altered["telemetry"] = [[1, 10]]
    forged = [
        encode_ack(everything),
        sign_ack(everything, "gw-1", Ed25519PrivateKey.generate()),
        sign_ack(everything, "gw-2", center),
        json.dumps(altered).encode(),
    ]
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            for payload in forged:
                rig.sender.on_ack(Inbound(payload))
            await settle_acks(rig)
    assert await rig.left_in_outbox() == 10, "a forged ack deleted rows"
    assert (rig.sender.rejected_acks, rig.sender.bad_acks, rig.sender.acked) == (12, 0, 0)
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(noisy) == 3, noisy  # unsigned, bad signature (twice the kind), gateway
    assert "unsigned ack" in noisy[0] and "bad signature" in noisy[1], noisy
    assert "signed for gateway 'gw-2'" in noisy[2], noisy
    # an ack that breaks the contract is still a bad ack, signed or not
    rig.sender.on_ack(Inbound(hostile_acks(rig.outbox.stream_id)[0]))
    assert rig.sender.bad_acks == 1
    rig.ack(1, 10)
    await settle_acks(rig)
    assert await rig.left_in_outbox() == 0
    assert rig.sender.acked == 10


async def test_bad_acks_warn_again_after_a_quiet_minute_with_the_count_between(
    make_rig: Callable[..., Rig],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = make_rig(window=16, batch_max=10, ack_timeout_s=30)
    now = [1000.0]
    # the sender's clock only (not started, so nothing else of it runs): not the loop's
    monkeypatch.setattr(sender_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    payload = hostile_acks(rig.outbox.stream_id)[0]
    with caplog.at_level(logging.WARNING, logger=sender_module.__name__):
        for _ in range(5):
            rig.sender.on_ack(Inbound(payload))
        now[0] += sender_module.BAD_ACK_LOG_EVERY_S
        rig.sender.on_ack(Inbound(payload))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "4 more ignored" in messages[1]
    assert rig.sender.bad_acks == 6


async def test_no_batch_outgrows_a_message_whatever_batch_max_allows(
    make_rig: Callable[..., Rig],
) -> None:
    """10,000 readings a batch is allowed; 400 long texts are 3.3 MB, which the center (and
    the broker) would refuse, and the gateway would then send again at every ack timeout.
    Cut in bytes, every batch fits in a message and every reading arrives once, in order."""
    rig = make_rig(window=4, batch_max=10_000, ack_timeout_s=30)
    encoder = ReadingEncoder()
    now = time.time()
    readings = [
        Reading("d", "label", "ü" * VALUE_TEXT_MAX, None, Quality.GOOD, now + i) for i in range(400)
    ]
    bodies = [(r.ts, encoder.encode(r)) for r in readings]
    last = await rig.in_db(lambda: rig.outbox.append(Lane.TELEMETRY, bodies))
    sizes: list[int] = []
    center = rig.uplink.on_publish

    def measure(topic: str, payload: bytes) -> None:
        sizes.append(len(payload))
        center(topic, payload)

    rig.uplink.on_publish = measure
    rig.sender.appended(Lane.TELEMETRY, last)
    rig.start()
    everything = range(1, last + 1)
    done = await wait_until(lambda: covered(rig.delivered, everything) == last, 20, lambda: None)
    assert done, f"{covered(rig.delivered, everything)}/{last} delivered"
    assert len(sizes) >= 4 and max(sizes) <= MESSAGE_MAX_BYTES, sizes
    # one run of consecutive batches from seq 1 to the last: nothing twice, nothing skipped
    assert rig.published[0][0] == 1 and rig.published[-1][1] == last
    assert all(b + 1 == a for (_, b), (a, _) in zip(rig.published, rig.published[1:], strict=False))
    assert rig.sender.resends == 0


async def test_an_alarm_event_too_big_for_a_message_goes_out_cut_to_fit(
    make_rig: Callable[..., Rig],
) -> None:
    """Mosquitto drops a message over its limit and disconnects the gateway, which would
    send the same alarm again at once: the alarm lane, and the uplink, would stop."""
    rig = make_rig(window=4, batch_max=10, ack_timeout_s=30)
    text = "\x1f" * VALUE_TEXT_MAX
    event = AlarmEvent(
        id="m-1/all",
        rule="all",
        dev="m-1",
        severity=Severity.MAJOR,
        state=AlarmState.ACTIVE,
        value=1,
        ts=time.time(),
        msg="all of them",
        values={f"p{i}": text for i in range(300)},
    )
    last = await rig.in_db(lambda: rig.outbox.record_alarms([event], []))
    sent: list[bytes] = []
    rig.uplink.on_publish = lambda topic, payload: sent.append(payload)
    rig.sender.appended(Lane.ALARMS, last)
    rig.start()
    assert await wait_until(lambda: bool(sent), 10, lambda: None), "no alarm sent"
    assert len(sent[0]) <= MESSAGE_MAX_BYTES
    got = decode_alarm(sent[0]).event
    assert (got.id, got.value, got.values) == ("m-1/all", 1, None)
    assert got.msg.startswith("all of them [cut to fit a message: the event was ")
