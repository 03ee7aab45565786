"""The uplink's goodbye: a gateway that stops while its broker vanishes exits cleanly."""

from __future__ import annotations

import asyncio
import socket

from edge_agent.uplink import Uplink
from mqttlink.url import Broker as BrokerSettings
from tests.proxy import FaultProxy
from tests.rig import WireTap
from tests.support import Broker


async def test_stop_survives_the_connection_dying_under_the_goodbye(mqtt_broker: Broker) -> None:
    uplink = Uplink(
        asyncio.get_running_loop(),
        client_id="gw-goodbye",
        broker=BrokerSettings.plain(mqtt_broker.url),
        keepalive_s=5,
        will=("t/state", b"offline"),
    )
    uplink.start()
    await asyncio.wait_for(uplink.connected.wait(), 10)
    sock = uplink._session._client.socket()
    assert isinstance(sock, socket.socket)
    # The link dies under the goodbye (as when the broker is stopped at the same moment):
    # paho still thinks it is connected, but the goodbye cannot be written.
    sock.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(uplink.stop(last_words=("t/state", b"bye")), 10)  # no exception


async def test_a_message_in_flight_when_the_link_died_is_not_sent_again_by_paho(
    mqtt_broker: Broker,
) -> None:
    """The sender resends what was not acked, in lane order (alarms first); paho must not
    slip its own copy of an old message in ahead of them after the reconnect."""
    proxy = FaultProxy(mqtt_broker.port)
    tap = WireTap(mqtt_broker)
    uplink = Uplink(
        asyncio.get_running_loop(),
        client_id="gw-resend",
        broker=BrokerSettings.plain(proxy.url),
        keepalive_s=5,
        will=("edgefleet/v1/gw/gw-resend/state", b"offline"),
        reconnect_max_s=0.5,
    )
    try:
        uplink.start()
        await asyncio.wait_for(uplink.connected.wait(), 10)
        proxy.stall()
        assert uplink.publish("edgefleet/v1/gw/gw-resend/telemetry", b"old")  # in flight
        await asyncio.sleep(0.2)
        proxy.cut()
        proxy.resume()
        for _ in range(100):  # the uplink notices the cut, then reconnects
            if not uplink.connected.is_set():
                break
            await asyncio.sleep(0.05)
        await asyncio.wait_for(uplink.connected.wait(), 10)
        assert uplink.publish("edgefleet/v1/gw/gw-resend/alarms", b"new")
        for _ in range(100):
            if any(payload == b"new" for _, payload in tap.snapshot()):
                break
            await asyncio.sleep(0.05)
        payloads = [payload for _, payload in tap.snapshot()]
        assert b"new" in payloads and b"old" not in payloads
    finally:
        await uplink.stop()
        tap.close()
        proxy.close()
