"""PUBACKs in the order their PUBLISHes came, whatever order the caller is done in.

MQTT requires a client to acknowledge QoS 1 messages in the order it received them
([MQTT-4.6.0-2]; QoS 2's PUBREC likewise, [MQTT-4.6.0-3]). Central ingest is done with
them in another order: its inbox serves gateways in turn and alarms first, so a gateway's
message that came late may be committed before one that came early. Mosquitto does not
mind; a broker that holds clients to the rule may. So a manual-ack session records every
arrival here and releases acks only as a prefix of the arrival order: an early message
not yet done holds back the PUBACKs of later ones (never the product's own ``ack`` to the
gateway, which goes as soon as the rows are committed).

A new connection starts a new order. What the previous one held is either resent by the
broker (a present session must resend what we did not acknowledge) and recorded again,
or gone; an ack for a packet id that is not waiting is dropped, never sent for a packet
id that may by now belong to another message.
"""

from __future__ import annotations

import threading
from collections import deque


class ArrivalOrder:
    """Packet ids waiting for their PUBACK, oldest first. Thread-safe: arrivals come on
    the network thread, acks from whoever stored the message."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order: deque[tuple[int, int]] = deque()  # (packet id, qos), as they came
        self._waiting: set[int] = set()
        self._done: set[int] = set()
        self._skipped: set[int] = set()

    def arrived(self, mid: int, qos: int) -> None:
        with self._lock:
            if mid in self._waiting:  # resent before we were done with it: one place
                return
            self._order.append((mid, qos))
            self._waiting.add(mid)

    def done(self, mid: int) -> list[tuple[int, int]]:
        """Mark ``mid`` done; return what may be acknowledged now, in arrival order."""
        return self._settle(mid, ack=True)

    def skip(self, mid: int) -> list[tuple[int, int]]:
        """Nobody took ``mid`` (its handler failed): it is not acknowledged, so that the
        broker sends it again on the next connection, and it holds nothing back; return
        what may be acknowledged now."""
        return self._settle(mid, ack=False)

    def _settle(self, mid: int, *, ack: bool) -> list[tuple[int, int]]:
        with self._lock:
            if mid not in self._waiting:
                return []
            self._done.add(mid)
            if not ack:
                self._skipped.add(mid)
            ready: list[tuple[int, int]] = []
            while self._order and self._order[0][0] in self._done:
                head, qos = self._order.popleft()
                self._done.discard(head)
                self._waiting.discard(head)
                if head in self._skipped:
                    self._skipped.discard(head)
                else:
                    ready.append((head, qos))
            return ready

    def restart(self) -> None:
        """A new connection: nothing of the previous one is waiting any more."""
        with self._lock:
            self._order.clear()
            self._waiting.clear()
            self._done.clear()
            self._skipped.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._order)
