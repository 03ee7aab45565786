"""The uplink's goodbye: a gateway that stops while its broker vanishes exits cleanly."""

from __future__ import annotations

import asyncio
import socket

from edge_agent.config.models import BrokerUrl
from edge_agent.uplink import Uplink
from tests.support import Broker


async def test_stop_survives_the_connection_dying_under_the_goodbye(mqtt_broker: Broker) -> None:
    uplink = Uplink(
        asyncio.get_running_loop(),
        client_id="gw-goodbye",
        broker=BrokerUrl.parse(mqtt_broker.url),
        keepalive_s=5,
        will=("t/state", b"offline"),
    )
    uplink.start()
    await asyncio.wait_for(uplink.connected.wait(), 10)
    sock = uplink._client.socket()
    assert isinstance(sock, socket.socket)
    # The link dies under the goodbye (as when the broker is stopped at the same moment):
    # paho still thinks it is connected, but the goodbye cannot be written.
    sock.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(uplink.stop(last_words=("t/state", b"bye")), 10)  # no exception
