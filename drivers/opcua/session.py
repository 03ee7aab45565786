"""One OPC-UA session over asyncua: open it (security, identity, trust), resolve the points,
read them in batches or subscribe to them, write, and notice when the session has died.

A session is never repaired: when it dies, the driver drops it and opens a new one. asyncua's
own reconnect is off, and subscriptions are built outside ``Client.create_subscription`` so
that asyncua's stale-subscription watchdog does not recreate them behind the driver's back.

What asyncua raises stops here::

    OSError, ConnectionError, TimeoutError,
    status codes of a dead session or channel   -> SessionError (the session is dead)
    certificate status codes at connect         -> SessionError saying where the agent's
                                                   certificate is, to give to the server admin
    user identity status codes at connect       -> SessionError naming the user
    a status code on one point                  -> a ``bad`` reading, reason = code name
    a bad service result for a whole request    -> ``bad`` readings for that request's points
    a write the server refuses                  -> WriteRefused
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import DataChangeEvent, StatusChangeEvent, Subscription
from asyncua.crypto import security_policies
from asyncua.crypto.uacrypto import CertProperties
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography.hazmat.primitives import serialization

from drivers.base import DeviceUnavailable, Quality, Reading, Value, WriteRefused

from . import codec
from .config import BrowsePath, NodeRef, OpcUaConnection, OpcUaDevice, OpcUaPoint
from .pki import Identity, PkiError, TrustList, first_certificate, load_certificate

T = TypeVar("T")
Changes = Callable[[OpcUaPoint, list[Reading]], None]
"""Where a session sends the readings of each data change, with the point they are of."""
log = logging.getLogger(__name__)
# asyncua logs every failed request, retry and teardown, at every attempt (and, in a command
# without logging set up, straight to stderr); the driver and browse report each state
# change once, in their own words.
logging.getLogger("asyncua").setLevel(logging.CRITICAL)

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
CERTIFICATE_REFUSALS = frozenset(
    {
        "BadSecurityChecksFailed",
        "BadCertificateUntrusted",
        "BadCertificateInvalid",
        "BadCertificateUriInvalid",
        "BadCertificateUseNotAllowed",
        "BadCertificateTimeInvalid",
        "BadCertificateRevoked",
        "BadCertificateRevocationUnknown",
        "BadCertificateIssuerRevoked",
        "BadCertificateIssuerRevocationUnknown",
        "BadCertificateIssuerTimeInvalid",
        "BadCertificateIssuerUseNotAllowed",
        "BadCertificateHostNameInvalid",
        "BadCertificatePolicyCheckFailed",
        "BadNoValidCertificates",
    }
)
USER_REFUSALS = frozenset(
    {
        "BadUserAccessDenied",
        "BadIdentityTokenInvalid",
        "BadIdentityTokenRejected",
        "BadUserSignatureInvalid",
    }
)
DEAD_SESSION = frozenset(
    {
        "BadSessionIdInvalid",
        "BadSessionClosed",
        "BadSessionNotActivated",
        "BadSecureChannelIdInvalid",
        "BadSecureChannelClosed",
        "BadSecureChannelTokenUnknown",
        "BadConnectionClosed",
        "BadServerHalted",
        "BadShutdown",
        "BadCommunicationError",
        "BadTimeout",
        "BadRequestTimeout",
        "BadServerNotConnected",
        "BadNotConnected",
        "BadDisconnect",
        "BadTcpInternalError",
        "BadNoCommunication",
        "BadTooManySessions",
    }
)


NOTIFICATIONS_PER_PUBLISH = 1000
"""The most data changes the server may put in one publish response."""
MIN_PUBLISHING_MS = 10.0
CLOCK_TOLERANCE_S = 300.0
"""A source timestamp further than this from the gateway's clock is not believed."""


class SessionError(Exception):
    """The session could not be opened, or has died. ``reason`` is short, for readings."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


def status_name(code: int) -> str:
    return str(ua.StatusCode(ua.UInt32(code)).name)


# asyncua annotates its wire types with int and str subclasses (ua.Int16, ua.String...);
# these helpers are the one place plain values become them.


def to_node_id(ref: NodeRef, namespace: int) -> ua.NodeId:
    ident = ref.identifier
    ns = ua.Int16(namespace)
    if isinstance(ident, int):
        return ua.NodeId(ua.Int32(ident), ns, ua.NodeIdType.Numeric)
    if isinstance(ident, str):
        return ua.NodeId(ua.String(ident), ns, ua.NodeIdType.String)
    if isinstance(ident, bytes):
        return ua.NodeId(ua.ByteString(ident), ns, ua.NodeIdType.ByteString)
    return ua.NodeId(ua.Guid(str(ident)), ns, ua.NodeIdType.Guid)


def standard_node(identifier: int) -> ua.NodeId:
    """A node of namespace 0 by its numeric id (``ObjectIds``)."""
    return ua.NodeId(ua.Int32(identifier))


@dataclass(slots=True)
class Target:
    """A configured point, and where it is on this server (or why it is nowhere)."""

    point: OpcUaPoint
    node_id: ua.NodeId | None = None
    problem: str | None = None
    variant_type: ua.VariantType | None = field(default=None, repr=False)


class Session:
    """An open, activated session with every point resolved, and in subscribe mode subscribed.

    ``changes`` receives the readings of each data change as it arrives (subscribe mode).
    """

    def __init__(
        self,
        client: Client,
        device: OpcUaDevice,
        changes: Changes,
    ) -> None:
        self.client = client
        self.device = device
        self.conn = device.opcua
        self.targets = [Target(point) for point in device.points]
        self.by_name = {t.point.name: t for t in self.targets}
        self._changes = changes
        self._clock_warned = False
        self._dead = asyncio.Event()
        self._death = ""
        self._max_read = self.conn.max_nodes_per_request
        self._max_items = self.conn.max_nodes_per_request
        self._subscription: Subscription | None = None
        self._by_handle: dict[int, Target] = {}
        self._reported: set[int] = set()
        self._consumer: asyncio.Task[None] | None = None
        self._silence_limit = self.conn.keepalive_s
        self._last_ok = time.monotonic()
        self.requests = 0

    # -- opening --------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        device: OpcUaDevice,
        *,
        identity: Identity | None,
        trust: TrustList,
        password: str | None,
        changes: Changes,
    ) -> Session:
        conn = device.opcua
        client = new_client(conn, identity)
        session = cls(client, device, changes)
        try:
            await connect(client, conn, identity, trust, password)
            client.connection_lost_callback = session._transport_lost
            await session._resolve()
            if conn.mode == "subscribe":
                await session._subscribe()
        except BaseException as exc:
            await session.close()
            if isinstance(exc, Exception):
                raise translate(exc, conn, identity) from None
            raise
        return session

    async def _transport_lost(self, exc: Exception) -> None:
        """asyncua's supervisor saw the socket close, or its probe of the server fail."""
        if isinstance(exc, TimeoutError):
            self.die("no answer to the watchdog probe")
        elif isinstance(exc, ConnectionError):
            self.die("connection closed")
        else:
            self.die(_describe(exc))

    def die(self, reason: str) -> None:
        if not self._dead.is_set():
            self._death = reason
            self._dead.set()

    @property
    def dead(self) -> bool:
        return self._dead.is_set()

    async def _call(self, request: Awaitable[T]) -> T:
        """One service call, bounded by the timeout; transport failures kill the session."""
        if self.dead:
            if inspect.iscoroutine(request):
                request.close()  # never sent: no "never awaited" warning
            raise SessionError(self._death)
        self.requests += 1
        try:
            async with asyncio.timeout(self.conn.timeout_s):
                result = await request
        except UaStatusCodeError as exc:
            if status_name(exc.code) not in DEAD_SESSION:
                raise  # about this request only: the caller turns it into bad readings
            self.die(status_name(exc.code))
            raise SessionError(self._death) from None
        except (OSError, TimeoutError, UaError) as exc:
            self.die(_describe(exc))
            raise SessionError(self._death) from None
        self._last_ok = time.monotonic()
        return result

    async def _resolve(self) -> None:
        """Node ids for every point: namespace URIs and browse paths are looked up once."""
        client = self.client
        await self._read_limits()
        namespaces: list[str] = []
        if any(isinstance(r, NodeRef) and r.namespace_uri for r in self._refs()):
            namespaces = list(await self._call(client.get_namespace_array()))
        paths: list[tuple[Target, BrowsePath]] = []
        for target in self.targets:
            ref = target.point.ref
            if isinstance(ref, BrowsePath):
                paths.append((target, ref))
            elif ref.namespace_uri is None:
                target.node_id = to_node_id(ref, ref.namespace)
            elif ref.namespace_uri in namespaces:
                target.node_id = to_node_id(ref, namespaces.index(ref.namespace_uri))
            else:
                target.problem = f"namespace {ref.namespace_uri} not on the server"
        for chunk in _chunks(paths, self._max_read):
            request = [_browse_path(path) for _, path in chunk]
            results = await self._call(client.uaclient.translate_browsepaths_to_nodeids(request))
            for (target, path), result in zip(chunk, results, strict=True):
                if result.StatusCode.is_good() and result.Targets:
                    found = result.Targets[0].TargetId
                    target.node_id = ua.NodeId(
                        found.Identifier, found.NamespaceIndex, found.NodeIdType
                    )
                else:
                    target.problem = f"browse path {path} not found ({result.StatusCode.name})"

    def _refs(self) -> list[NodeRef | BrowsePath]:
        return [t.point.ref for t in self.targets]

    async def _read_limits(self) -> None:
        """The server's own per-call limits, when it states them (0 means none)."""
        ids = (
            ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
            ObjectIds.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
        )
        try:
            values = await self._call(
                self.client.uaclient.read_attributes(
                    [standard_node(i) for i in ids], AttributeIds.Value
                )
            )
        except UaStatusCodeError:
            return
        limits = [
            int(v.Value.Value)
            if v.StatusCode is not None
            and v.StatusCode.is_good()
            and v.Value is not None
            and isinstance(v.Value.Value, int)
            and v.Value.Value > 0
            else 0
            for v in values
        ]
        if limits[0]:
            self._max_read = min(self._max_read, limits[0])
        if limits[1]:
            self._max_items = min(self._max_items, limits[1])

    # -- poll mode ------------------------------------------------------------------------

    async def read(self) -> list[Reading]:
        """Every point once, in as few Read calls as the server's limit allows (usually one)."""
        found = [t for t in self.targets if t.node_id is not None and t.problem is None]
        by_point: dict[str, list[Reading]] = {}
        for chunk in _chunks(found, self._max_read):
            params = ua.ReadParameters()
            params.NodesToRead = [
                ua.ReadValueId(NodeId=t.node_id, AttributeId=AttributeIds.Value) for t in chunk
            ]
            params.TimestampsToReturn = ua.TimestampsToReturn.Source
            try:
                results = await self._call(self.client.uaclient.read(params))
            except UaStatusCodeError as exc:
                ts, reason = time.time(), status_name(exc.code)
                for t in chunk:
                    by_point[t.point.name] = [self._bad(t.point, ts, reason)]
                continue
            ts = time.time()  # when the answer arrived, as every driver stamps
            for t, value in zip(chunk, results, strict=True):
                by_point[t.point.name] = self.readings(t.point, value, ts)
        now = time.time()
        out: list[Reading] = []
        for t in self.targets:
            out.extend(by_point.get(t.point.name) or [self._bad(t.point, now, t.problem or "")])
        return out

    def readings(self, point: OpcUaPoint, value: ua.DataValue, ts: float) -> list[Reading]:
        """The readings for one DataValue of ``point``, stamped ``ts``."""
        code = value.StatusCode.value if value.StatusCode is not None else 0
        quality, reason = codec.judge(code, status_name(code))
        if quality is Quality.BAD:
            return [self._bad(point, ts, reason or "bad")]
        raw = value.Value.Value if value.Value is not None else None
        try:
            pairs = codec.decode(point, raw)
        except ValueError as exc:
            return [self._bad(point, ts, str(exc))]
        dev, unit = self.device.id, point.unit
        return [Reading(dev, name, v, unit, quality, ts, reason) for name, v in pairs]

    def _bad(self, point: OpcUaPoint, ts: float, reason: str) -> Reading:
        return Reading.bad(self.device.id, point.name, point.unit, ts, reason)

    def unavailable(self, ts: float) -> list[Reading]:
        """``bad`` readings for points this session could not resolve or monitor."""
        return [self._bad(t.point, ts, t.problem) for t in self.targets if t.problem is not None]

    # -- subscribe mode -------------------------------------------------------------------

    async def _subscribe(self) -> None:
        device, conn = self.device, self.conn
        intervals = [device.sampling_ms(p) for p in device.points]
        fastest = min([i for i in intervals if i > 0] or [device.poll_s * 1000])
        # Publishing at half the fastest sampling interval delivers a sampled change within
        # one sampling interval; an idle subscription still sends only keep-alives.
        publishing_ms = max(fastest / 2, MIN_PUBLISHING_MS)
        # A keep-alive at least twice per keepalive_s, so one lost is not yet a dead session.
        keepalive_count = max(1, math.floor(conn.keepalive_s * 1000 / 2 / publishing_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=publishing_ms,
            RequestedLifetimeCount=max(3 * keepalive_count, math.ceil(60_000 / publishing_ms)),
            RequestedMaxKeepAliveCount=keepalive_count,
            MaxNotificationsPerPublish=NOTIFICATIONS_PER_PUBLISH,
            PublishingEnabled=True,
            Priority=0,
        )
        # asyncua's own queue takes a publish response whole before our consumer runs; sized
        # so it never drops, the one bound that drops (and counts) is the driver's buffer.
        subscription = Subscription(
            self.client.uaclient.session, params, None, queue_maxsize=4 * NOTIFICATIONS_PER_PUBLISH
        )
        revised = await self._call(subscription.init())
        self._subscription = subscription
        self._silence_limit = max(
            conn.keepalive_s,
            2 * revised.RevisedPublishingInterval * revised.RevisedMaxKeepAliveCount / 1000,
        )
        self._consumer = asyncio.create_task(self._consume(subscription))
        found = [t for t in self.targets if t.node_id is not None and t.problem is None]
        for offset, chunk in enumerate(_chunks(found, self._max_items)):
            requests = []
            for i, target in enumerate(chunk):
                handle = offset * self._max_items + i + 1
                self._by_handle[handle] = target
                requests.append(_monitored_item(target, handle, device.sampling_ms(target.point)))
            results = await self._call(subscription.create_monitored_items(requests))
            for target, result in zip(chunk, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    target.problem = result.name

    async def _consume(self, subscription: Subscription) -> None:
        timestamps = self.conn.timestamps
        async for event in subscription:
            if isinstance(event, StatusChangeEvent):
                status = event.notification.Status
                if status is not None and not status.is_good():
                    self.die(f"subscription ended ({status.name})")
                continue
            if not isinstance(event, DataChangeEvent):
                continue
            item = event.data.monitored_item
            target = self._by_handle.get(item.ClientHandle)
            if target is None:
                continue
            value = item.Value
            ts = time.time()
            # The first notification of an item is its current value, read now; its source
            # timestamp says when it last changed, maybe days ago, older than the stale
            # marks of an outage just ended. Later ones are changes, stamped when they
            # happened at the source.
            first = item.ClientHandle not in self._reported
            self._reported.add(item.ClientHandle)
            if timestamps == "source" and not first:
                stamp = value.SourceTimestamp or value.ServerTimestamp
                if stamp is not None:
                    ts = self._source_time(codec.unix(stamp), ts)
            self._changes(target.point, self.readings(target.point, value, ts))

    def _source_time(self, source: float, now: float) -> float:
        """The server's timestamp, unless its clock is clearly wrong (a PLC whose backup
        battery died wakes up in 2000): then the gateway's, said once per session."""
        if abs(source - now) <= CLOCK_TOLERANCE_S:
            return source
        if not self._clock_warned:
            self._clock_warned = True
            log.warning(
                "opcua %s: the server's clock is %+.0f s off the gateway's; stamping its "
                "changes with the gateway's clock (timestamps: edge says so for good)",
                self.device.id,
                source - now,
            )
        return now

    # -- liveness -------------------------------------------------------------------------

    async def watch(self) -> str:
        """Return when the session is dead, with the reason.

        Dead means: asyncua saw the transport go; a call failed with a dead-session status or
        timed out; no publish response (data or keep-alive) came for ``keepalive_s`` (subscribe
        mode); or a probe read of the server state, sent after ``keepalive_s`` without a
        successful call, failed (poll mode).
        """
        tick = min(0.5, self.conn.keepalive_s / 4)
        opened = time.monotonic()
        while not self.dead:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._dead.wait()
            if self.dead:
                break
            now = time.monotonic()
            sub = self._subscription
            if sub is not None:
                last = getattr(sub, "last_publish_at", None) or opened
                if now - last > self._silence_limit:
                    self.die(f"no keep-alive from the server for {now - last:.0f} s")
            elif now - self._last_ok > self.conn.keepalive_s:
                state = standard_node(ObjectIds.Server_ServerStatus_State)
                with contextlib.suppress(SessionError, UaStatusCodeError):
                    await self._call(
                        self.client.uaclient.read_attributes([state], AttributeIds.Value)
                    )
        return self._death

    # -- writing --------------------------------------------------------------------------

    async def write(self, name: str, value: Value) -> None:
        target = self.by_name.get(name)
        if target is None:
            raise WriteRefused(f"{self.device.id} has no point {name!r}")
        if target.node_id is None or target.problem is not None:
            raise WriteRefused(f"{name}: {target.problem}")
        try:
            vtype = target.variant_type or await self._variant_type(target.node_id)
            target.variant_type = vtype
            data = ua.DataValue(ua.Variant(codec.coerce(value, vtype.name), vtype))
            params = ua.WriteParameters()
            params.NodesToWrite = [
                ua.WriteValue(NodeId=target.node_id, AttributeId=AttributeIds.Value, Value=data)
            ]
            (status,) = await self._call(self.client.uaclient.write(params))
        except ValueError as exc:
            raise WriteRefused(f"{name}: {exc}") from None
        except UaStatusCodeError as exc:
            raise WriteRefused(f"{name}: {status_name(exc.code)}") from None
        except SessionError as exc:
            raise DeviceUnavailable(exc.reason) from None
        if not status.is_good():
            raise WriteRefused(f"{name}: {status.name}")

    async def _variant_type(self, node_id: ua.NodeId) -> ua.VariantType:
        """The type a written Variant must have: the node's DataType, or for an abstract
        DataType (BaseDataType, Number...) the type of the value the node holds now."""
        node = self.client.get_node(node_id)
        vtype: ua.VariantType = await self._call(node.read_data_type_as_variant_type())
        if vtype == ua.VariantType.Variant:
            current: ua.DataValue = await self._call(node.read_data_value())
            if current.Value is not None:
                vtype = current.Value.VariantType
        return vtype

    # -- closing --------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the session, bounded by the timeout; a dead peer costs no more than that."""
        self.die("closed")
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consumer
        client = self.client
        client.connection_lost_callback = None
        try:
            async with asyncio.timeout(self.conn.timeout_s):
                await client.disconnect()
        except Exception as exc:  # a dead peer: nothing to say goodbye to
            log.debug("opcua %s: disconnect: %r", self.device.id, exc)
        finally:
            client.disconnect_socket()


def new_client(conn: OpcUaConnection, identity: Identity | None) -> Client:
    client = Client(conn.endpoint, timeout=conn.timeout_s, watchdog_intervall=conn.keepalive_s)
    client.name = client.description = "EdgeFleet agent"
    client.product_uri = "urn:edgefleet:agent"
    if identity is not None:
        client.application_uri = identity.application_uri
    # The server drops a session the agent lost after this long; a new one replaces it.
    client.session_timeout = max(30_000, int(conn.keepalive_s * 4000))
    return client


async def connect(
    client: Client,
    conn: OpcUaConnection,
    identity: Identity | None,
    trust: TrustList,
    password: str | None,
) -> None:
    """Security, user, then connect: hello, secure channel, session, activation."""
    timeout = conn.timeout_s
    if conn.security.enabled:
        assert identity is not None
        policy = POLICIES[conn.security.policy]
        mode = getattr(ua.MessageSecurityMode, conn.security.mode)
        async with asyncio.timeout(timeout):
            endpoints = await client.connect_and_get_server_endpoints()
        matching = [
            e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode
        ]
        if not matching:
            offered = sorted(
                f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints
            )
            raise SessionError(
                f"the server offers no {conn.security} endpoint; it offers {', '.join(offered)}",
                "security policy not offered",
            )
        server_der = first_certificate(matching[0].ServerCertificate or b"")
        if not server_der:
            raise SessionError("the server sent no certificate", "no server certificate")
        trust.check(server_der)
        cert = load_certificate(identity.cert.read_bytes())
        key = serialization.load_pem_private_key(identity.key.read_bytes(), password=None)
        key_der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        await client.set_security(
            policy,
            CertProperties(cert.public_bytes(serialization.Encoding.DER), extension="der"),
            CertProperties(key_der, extension="der"),
            server_certificate=CertProperties(server_der, extension="der"),
            mode=mode,
        )
    if conn.username is not None:
        client.set_user(conn.username)
        client.set_password(password or "")
    try:
        async with asyncio.timeout(3 * timeout):
            await client.connect()
    except BaseException:
        client.disconnect_socket()
        raise


def translate(exc: Exception, conn: OpcUaConnection, identity: Identity | None) -> SessionError:
    """asyncua's exception while opening a session, as a SessionError a technician can act on."""
    if isinstance(exc, SessionError):
        return exc
    if isinstance(exc, PkiError):
        return SessionError(str(exc), exc.reason)
    if _channel_refused(exc):
        if conn.security.enabled and identity is not None:
            return SessionError(
                "the server refused to open a secure channel (it answered with a fault, as "
                "servers do for a client certificate they do not trust): give "
                f"{identity.cert} to the server's administrator to trust (application URI "
                f"{identity.application_uri}); the agent keeps retrying",
                "secure channel refused",
            )
        return SessionError("the server refused to open a secure channel", "secure channel refused")
    if isinstance(exc, UaStatusCodeError) and exc.code is not None:
        name = status_name(exc.code)
        if name in CERTIFICATE_REFUSALS and conn.security.enabled and identity is not None:
            return SessionError(
                f"the server rejected the agent's certificate ({name}): give {identity.cert} "
                f"to the server's administrator to trust (application URI "
                f"{identity.application_uri}); the agent keeps retrying",
                f"agent certificate rejected ({name})",
            )
        if name in USER_REFUSALS:
            who = f"user {conn.username!r}" if conn.username else "anonymous access"
            hint = (
                f"check username and the password in {conn.password_file}"
                if conn.username
                else "set username and password_file"
            )
            return SessionError(f"the server refused {who} ({name}): {hint}", name)
        if name in ("BadSecurityPolicyRejected", "BadSecurityModeRejected") and (
            not conn.security.enabled
        ):
            return SessionError(
                f"the server refuses unsecured connections ({name}); set security: "
                "{policy: Basic256Sha256, mode: SignAndEncrypt}",
                name,
            )
        return SessionError(name)
    return SessionError(_describe(exc))


def _channel_refused(exc: Exception) -> bool:
    """The server answered OpenSecureChannel with a ServiceFault instead of a response.

    node-opcua does so for a client certificate it does not trust (BadSecurityChecksFailed);
    asyncua 2.1 then fails an assertion in ``open_secure_channel`` and the status code is lost.
    """
    if not isinstance(exc, AssertionError):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].name == "open_secure_channel"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, UaStatusCodeError) and exc.code is not None:
        return status_name(exc.code)
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror).lower()
    if isinstance(exc, UaError | ConnectionError | OSError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def _browse_path(path: BrowsePath) -> ua.BrowsePath:
    elements = [
        ua.RelativePathElement(
            ReferenceTypeId=standard_node(ObjectIds.HierarchicalReferences),
            IsInverse=cast(ua.Boolean, False),
            IncludeSubtypes=cast(ua.Boolean, True),
            TargetName=ua.QualifiedName(ua.String(name), ua.UInt16(ns)),
        )
        for ns, name in path.steps
    ]
    return ua.BrowsePath(
        StartingNode=standard_node(ObjectIds.RootFolder),
        RelativePath=ua.RelativePath(Elements=elements),
    )


def _monitored_item(target: Target, handle: int, sampling_ms: float) -> Any:
    point = target.point
    parameters = ua.MonitoringParameters(
        ClientHandle=handle,
        SamplingInterval=sampling_ms,
        QueueSize=point.queue_size,
        DiscardOldest=True,
    )
    if point.deadband is not None:
        absolute = point.deadband.abs is not None
        parameters.Filter = ua.DataChangeFilter(
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=ua.DeadbandType.Absolute if absolute else ua.DeadbandType.Percent,
            DeadbandValue=point.deadband.abs if absolute else point.deadband.percent,
        )
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=target.node_id, AttributeId=AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting,
        RequestedParameters=parameters,
    )


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
