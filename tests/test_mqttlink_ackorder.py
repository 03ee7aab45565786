"""Manual acks leave in the order the messages came [MQTT-4.6.0-2], whatever order the
caller is done with them in (central ingest serves gateways in turn and alarms first)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from mqttlink.ackorder import ArrivalOrder
from mqttlink.session import Message, Session
from mqttlink.url import Broker as BrokerSettings
from tests.support import Broker, wait_for


def test_acks_are_released_as_a_prefix_of_the_arrival_order() -> None:
    order = ArrivalOrder()
    for mid in (7, 3, 9):
        order.arrived(mid, 1)
    assert order.done(9) == []
    assert order.done(3) == []  # 7 came first and is not done
    assert order.done(7) == [(7, 1), (3, 1), (9, 1)]
    assert len(order) == 0


def test_a_skipped_message_is_never_acked_and_holds_nothing_back() -> None:
    order = ArrivalOrder()
    for mid in (1, 2, 3):
        order.arrived(mid, 1)
    assert order.done(2) == []
    assert order.skip(1) == [(2, 1)]  # 1 goes unacknowledged: the broker sends it again
    assert order.done(3) == [(3, 1)]


def test_unknown_twice_done_and_previous_connection_ids_are_never_acked() -> None:
    order = ArrivalOrder()
    order.arrived(5, 1)
    order.arrived(5, 1)  # resent before we were done with it: still one place
    assert order.done(6) == []
    assert order.done(5) == [(5, 1)]
    assert order.done(5) == []
    order.arrived(8, 1)
    order.restart()  # a new connection: 8 may now belong to another message
    assert order.done(8) == []


def test_a_real_broker_gets_pubacks_in_the_order_it_sent(tmp_path: Path) -> None:
    """Mosquitto logs every PUBLISH it sends us and every PUBACK it gets (debug): the
    session is done with them last first, the broker still sees them first first."""
    d = tmp_path / "broker"
    d.mkdir()
    broker = Broker(d, extra_conf="log_type debug\n").start()
    settings = BrokerSettings.plain(broker.url)
    got: list[Message] = []
    lock = threading.Lock()

    def take(msg: Message) -> None:
        with lock:
            got.append(msg)

    receiver = Session(settings, client_id="orderly", manual_ack=True, name="receiver")
    receiver.subscribe("t/#", take)
    sender = Session(settings, client_id="sender", name="sender")
    try:
        receiver.open()
        sender.open()
        for i in range(6):
            sender.publish(f"t/{i}", str(i).encode(), qos=1)
        wait_for(lambda: len(got) == 6, 10, what="six messages at the receiver")
        with lock:
            taken = list(got)
        for msg in reversed(taken):
            receiver.ack(msg)

        def pubacks() -> list[int]:
            log = broker.log.read_text(errors="replace")
            return [int(m) for m in re.findall(r"Received PUBACK from orderly \(Mid: (\d+)", log)]

        wait_for(lambda: len(pubacks()) == 6, 10, what="six PUBACKs at the broker")
        log = broker.log.read_text(errors="replace")
        sent = [int(m) for m in re.findall(r"Sending PUBLISH to orderly \(d0, q1, r0, m(\d+)", log)]
        assert sent == [m.mid for m in taken]
        assert pubacks() == sent
    finally:
        sender.close()
        receiver.close()
        broker.stop()
