"""The center's signing service (``fleet central enroll``): answers certificate requests,
token enrollments from the broker's enrollment listener and renewals from gateways'
own topics (``edge_agent.contract.csr``), by the rules of ``central.enrollment``.

It is a process of its own, apart from ingest: the CA's key is in memory only here. One
session, on the center's listener; requests are answered one at a time, at most
``RATE_PER_S`` a second (a burst of ``BURST``): a flood of requests from clients without
a certificate costs the center a bounded amount of work and disk, and the rest are
dropped, counted and said once a minute. Enrollments and renewals have a bucket each:
anyone holding a token may reach the enrollment listener, and a flood there must not
take the answers a gateway with a certificate waits for to renew it.

An enrollment request is answered only if the topic it came on is its gateway's
enrollment identity's (``enroll-GW``, which only GW's token logs in as: the broker's ACL
confines each identity to its own topic), and the answer goes to that identity alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from central import enrollment
from central.pki import DEFAULT_CERT_DAYS
from central.store.api import Store
from central.store.errors import StoreError
from edge_agent.contract.csr import (
    CsrError,
    EnrollRequest,
    RenewRequest,
    Reply,
    certificate_topic,
    enrollment_identity,
    mounted,
    reply_topic,
    requests_filter,
    topic_identity,
)
from edge_agent.contract.topics import Topics, is_gateway_id
from mqttlink.session import Message, Session, Subscription
from mqttlink.url import Broker

log = logging.getLogger(__name__)

RATE_PER_S = 20.0
BURST = 50
DROPPED_LOG_S = 60.0


@dataclass
class SignerStats:
    signed: int = 0
    pending: int = 0
    refused: int = 0
    malformed: int = 0
    dropped: int = 0


class Signer:
    def __init__(
        self,
        store: Store,
        ca_dir: Path,
        broker: Broker,
        topics: Topics,
        *,
        client_id: str = "edgefleet-central-enroll",
        days: int = DEFAULT_CERT_DAYS,
    ) -> None:
        self.store = store
        self.ca_dir = ca_dir
        self.topics = topics
        self.days = days
        self.stats = SignerStats()
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._enrollments = _Bucket()
        self._renewals = _Bucket()
        self._dropped_logged = -DROPPED_LOG_S  # the first drop is said, whatever the clock
        self._malformed_logged = -DROPPED_LOG_S
        self._session = Session(broker, client_id=client_id, name="central-enroll")
        self._session.on_up(lambda _present: self.ready.set())
        self._session.on_down(lambda _why: self.ready.clear())
        self._session.subscribe(
            Subscription(mounted(requests_filter(topics)), qos=1), self._on_enroll
        )
        renewals = f"{topics.root}/gw/+/csr"
        self._session.subscribe(Subscription(renewals, qos=1), self._on_renew)

    def start(self) -> None:
        self._session.start()

    def close(self) -> None:
        self._session.close()

    def _admit(self, bucket: _Bucket) -> bool:
        """Whether this request may be answered now, by its kind's bucket."""
        now = time.monotonic()
        if bucket.take(now):
            return True
        self.stats.dropped += 1
        if now - self._dropped_logged > DROPPED_LOG_S:
            self._dropped_logged = now
            log.warning(
                "certificate requests come faster than %g a second: %d dropped so far",
                RATE_PER_S,
                self.stats.dropped,
            )
        return False

    def _on_enroll(self, msg: Message) -> None:
        identity = topic_identity(self.topics, msg.topic)
        if identity is None:
            return  # a gateway's own name (the ACL's patterns are everyone's): not one
        with self._lock:
            if not self._admit(self._enrollments):
                return
            try:
                request = EnrollRequest.decode(msg.payload)
            except CsrError as exc:
                self._malformed(f"an enrollment request that is not one: {exc}")
                return
            if enrollment_identity(request.gw) != identity:
                self._malformed(f"{identity} asked in the name of {request.gw}")
                return
            reply = self._answer(
                lambda: enrollment.enroll(self.ca_dir, self.store, request, days=self.days)
            )
            if reply is None:
                return
            topic = mounted(reply_topic(self.topics, identity))
            self._session.publish(topic, replace(reply, nonce=request.nonce).encode(), qos=1)

    def _on_renew(self, msg: Message) -> None:
        parts = msg.topic.split("/")
        gw = parts[-2] if len(parts) >= 2 else ""
        if not is_gateway_id(gw):
            return
        with self._lock:
            if not self._admit(self._renewals):
                return
            try:
                request = RenewRequest.decode(msg.payload)
            except CsrError as exc:
                self._malformed(f"a renewal request of {gw} that is not one: {exc}")
                return
            reply = self._answer(
                lambda: enrollment.renew(self.ca_dir, self.store, gw, request, days=self.days)
            )
            if reply is not None:
                self._session.publish(certificate_topic(self.topics, gw), reply.encode(), qos=1)

    def _malformed(self, what: str) -> None:
        """Counted; said once a minute (anyone may send them: a log line each would be
        a way to fill the center's disk)."""
        self.stats.malformed += 1
        now = time.monotonic()
        if now - self._malformed_logged > DROPPED_LOG_S:
            self._malformed_logged = now
            log.info("%s (%d not a request so far)", what, self.stats.malformed)

    def _answer(self, decide: Callable[[], Reply]) -> Reply | None:
        try:
            reply = decide()
        except (StoreError, enrollment.EnrollmentError, OSError) as exc:
            # nothing answered: the gateway asks again, and may be answered then
            log.warning("cannot answer a certificate request now: %s", exc)
            return None
        setattr(self.stats, reply.status, getattr(self.stats, reply.status) + 1)
        why = f" ({reply.reason})" if reply.status == "refused" else ""
        log.info("certificate request of %s: %s%s", reply.gw, reply.status, why)
        return reply


class _Bucket:
    """A token bucket: ``RATE_PER_S`` a second, ``BURST`` at once."""

    def __init__(self) -> None:
        self._tokens = float(BURST)
        self._refilled = time.monotonic()

    def take(self, now: float) -> bool:
        self._tokens = min(BURST, self._tokens + (now - self._refilled) * RATE_PER_S)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def run_signer(signer: Signer, stop: threading.Event) -> int:
    signer.start()
    try:
        stop.wait()
    finally:
        signer.close()
    return 0
