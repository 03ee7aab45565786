"""A simulated pump-station PLC on asyncua's own OPC-UA server, for tests, test rigs and demos.

Two pumps and a station object, in namespace 2 (``urn:edgefleet:sim:pump-station``)::

    Objects/Pump1/Level        Double    ns=2;s=Pump1.Level      mm
                 /Running      Boolean   ns=2;i=1042
                 /Pressure     Float     ns=2;s=Pump1.Pressure   bar
                 /Speed        Int16     ns=2;s=Pump1.Speed      %   (writable setpoint)
                 /RunHours     UInt32    ns=2;s=Pump1.RunHours   h
           Pump2/...           the same, Running at ns=2;i=1043
           Station/Name        String    ns=2;s=Station.Name
                  /LastService DateTime  ns=2;s=Station.LastService
                  /WellLevels  Double[4] ns=2;s=Station.WellLevels  mm (an array)
                  /Mode        Int32     ns=2;g=5b0e8b6a-1f3c-4c7e-9a55-0d1c2f3e4a5b
                  /Serial      String    ns=2;b=U0VSSUFM
                  /Alarm       Boolean   ns=2;s=Station.Alarm   (writable: the siren)

It listens on 127.0.0.1 only by default. With ``secure=True`` it also offers Sign and
SignAndEncrypt endpoints for Basic256Sha256 and both Aes policies, with a certificate kept in
``pki_dir/server/`` (made on first start), and accepts only client certificates found in
``pki_dir/trusted/``. ``users`` turns on username/password checking (anonymous is then
refused).

``python -m drivers.simulated.opcua_server --port 4840 [--secure] [--user ops:secret]`` serves
it with moving values until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.callback import CallbackType
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from drivers.opcua.pki import generate
from drivers.simulated.animate import Served, animate, stop_on_signals, until_stopped

NAMESPACE = "urn:edgefleet:sim:pump-station"
SERVER_URI = "urn:edgefleet:sim:server"


@dataclass(frozen=True, slots=True)
class SimNode:
    """One variable: ``key`` is its name for ``set``/``get`` (``Pump1.Level``)."""

    key: str
    node_id: str
    variant: str
    initial: Any
    writable: bool = False

    @property
    def parent(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def browse_name(self) -> str:
        return self.key.split(".", 1)[1]


def _pump(n: int, running_id: int) -> list[SimNode]:
    return [
        SimNode(f"Pump{n}.Level", f"ns=2;s=Pump{n}.Level", "Double", 1200.0 - 200 * n),
        SimNode(f"Pump{n}.Running", f"ns=2;i={running_id}", "Boolean", False),
        SimNode(f"Pump{n}.Pressure", f"ns=2;s=Pump{n}.Pressure", "Float", 0.0),
        SimNode(f"Pump{n}.Speed", f"ns=2;s=Pump{n}.Speed", "Int16", 0, writable=True),
        SimNode(f"Pump{n}.RunHours", f"ns=2;s=Pump{n}.RunHours", "UInt32", 1834 * n),
    ]


PUMP_STATION: tuple[SimNode, ...] = (
    *_pump(1, 1042),
    *_pump(2, 1043),
    SimNode("Station.Name", "ns=2;s=Station.Name", "String", "PS-07 Riverside"),
    SimNode(
        "Station.LastService",
        "ns=2;s=Station.LastService",
        "DateTime",
        datetime(2024, 3, 18, 7, 30, tzinfo=UTC),
    ),
    SimNode("Station.WellLevels", "ns=2;s=Station.WellLevels", "Double", [1000.0, 800.0, 0.0, 0.0]),
    SimNode("Station.Mode", "ns=2;g=5b0e8b6a-1f3c-4c7e-9a55-0d1c2f3e4a5b", "Int32", 1),
    SimNode("Station.Serial", "ns=2;b=U0VSSUFM", "String", "PS07-2291"),
    SimNode("Station.Alarm", "ns=2;s=Station.Alarm", "Boolean", False, writable=True),
)

SECURE_POLICIES = [
    ua.SecurityPolicyType.NoSecurity,
    ua.SecurityPolicyType.Basic256Sha256_Sign,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
]


class _Users(UserManager):
    """asyncua's user manager interface: a user for good credentials, None otherwise."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class SimulatedPumpStation(Served):
    """The pump station as an OPC-UA server on ``host:port``; ``endpoint`` is its URL."""

    def __init__(
        self,
        nodes: Sequence[SimNode] = PUMP_STATION,
        *,
        host: str = "127.0.0.1",
        port: int = 4840,
        path: str = "/edgefleet/sim",
        secure: bool = False,
        pki_dir: Path | None = None,
        users: Mapping[str, str] | None = None,
        clock: bool = True,
    ) -> None:
        """``clock=False`` leaves ServerStatus.CurrentTime still, and makes stop() take
        milliseconds instead of the clock's one-second tick."""
        if secure and pki_dir is None:
            raise ValueError("a secure server needs pki_dir for its certificate and trust list")
        self.specs = {node.key: node for node in nodes}
        self.host, self.port, self.path = host, port, path
        self.secure = secure
        self.pki_dir = pki_dir
        self.users = dict(users or {})
        self.clock = clock
        self._server: Server | None = None
        self._nodes: dict[str, Node] = {}
        self._values: dict[str, Any] = {}
        self.reads: list[int] = []
        """Nodes asked for in each Read service call a client made, in order."""

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}{self.path}"

    @property
    def certificate(self) -> Path:
        """The server's certificate (secure servers): what a client must trust."""
        assert self.pki_dir is not None
        return self.pki_dir / "server" / "cert.der"

    @property
    def trusted_dir(self) -> Path:
        """Client certificates this server accepts (secure servers)."""
        assert self.pki_dir is not None
        return self.pki_dir / "trusted"

    async def start(self) -> None:
        server = Server(user_manager=_Users(self.users) if self.users else None)
        await server.init()
        server.disable_clock(not self.clock)
        server.set_endpoint(self.endpoint)
        server.set_server_name("EdgeFleet simulated pump station")
        if self.secure:
            await self._secure(server)
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        if self.users:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        index = await server.register_namespace(NAMESPACE)
        assert index == 2, f"namespace {NAMESPACE} got index {index}, the node ids assume 2"
        objects: dict[str, Node] = {}
        for spec in self.specs.values():
            parent = objects.get(spec.parent)
            if parent is None:
                parent = await server.nodes.objects.add_object(
                    ua.NodeId.from_string(f"ns=2;s={spec.parent}"),
                    ua.QualifiedName(ua.String(spec.parent), ua.UInt16(2)),
                )
                objects[spec.parent] = parent
            vtype = getattr(ua.VariantType, spec.variant)
            node = await parent.add_variable(
                ua.NodeId.from_string(spec.node_id),
                ua.QualifiedName(ua.String(spec.browse_name), ua.UInt16(2)),
                ua.Variant(spec.initial, vtype),
            )
            if spec.writable:
                await node.set_writable()
            self._nodes[spec.key] = node
        server.subscribe_server_callback(CallbackType.PreRead, self._count_read)
        await server.start()
        self._server = server

    def _count_read(self, event: Any, dispatcher: Any) -> None:
        if event.is_external:
            self.reads.append(len(event.request_params.NodesToRead))

    async def _secure(self, server: Server) -> None:
        assert self.pki_dir is not None
        cert, key = self.certificate, self.pki_dir / "server" / "key.pem"
        if not cert.exists():
            generate(cert, key, SERVER_URI, self.host, server=True)
        await server.set_application_uri(SERVER_URI)
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        server.set_security_policy(SECURE_POLICIES)
        self.trusted_dir.mkdir(parents=True, exist_ok=True)
        server.set_certificate_validator(self._validate)

    async def _validate(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        """Accept exactly the client certificates in ``trusted/``, read at each session, as
        a PLC's trust list does (asyncua's TrustStore cannot start empty)."""
        der = cert.public_bytes(Encoding.DER)
        for path in self.trusted_dir.glob("*.der"):
            if path.read_bytes() == der:
                return
        raise ServiceError(StatusCodes.BadCertificateUntrusted)

    async def trust(self, client_certificate: Path) -> None:
        """Accept this client certificate (DER) from now on, as a server admin would."""
        shutil.copy(client_certificate, self.trusted_dir / client_certificate.name)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    def node(self, key: str) -> Node:
        return self._nodes[key]

    async def set(self, key: str, value: Any, source_time: datetime | None = None) -> None:
        """Set a variable as the PLC would: the value keeps the variable's own type;
        ``source_time`` plays a PLC whose clock is wrong."""
        vtype = getattr(ua.VariantType, self.specs[key].variant)
        variant = ua.Variant(value, vtype)
        if source_time is None:
            await self._nodes[key].write_value(variant)
        else:
            stamp = ua.DateTime.fromtimestamp(source_time.timestamp(), UTC)
            await self._nodes[key].write_value(ua.DataValue(variant, SourceTimestamp=stamp))
        self._values[key] = value

    async def set_status(self, key: str, status: str) -> None:
        """Give a variable a status code (``BadSensorFailure``...), keeping its value."""
        vtype = getattr(ua.VariantType, self.specs[key].variant)
        value = self._values.get(key, self.specs[key].initial)
        code = ua.StatusCode(getattr(StatusCodes, status))
        await self._nodes[key].write_value(ua.DataValue(ua.Variant(value, vtype), StatusCode=code))

    async def reset(self) -> None:
        """Every variable back to its initial value with a good status; read counts cleared."""
        for key, spec in self.specs.items():
            await self.set(key, spec.initial)
        self.reads.clear()

    async def get(self, key: str) -> Any:
        return await self._nodes[key].read_value()


class PumpStationModel:
    """How the station moves: inflow fills the wells, a pump starts high and stops low.

    Seeded, so a demo or test run is the same every time. ``step()`` is one second.
    """

    START_MM, STOP_MM = 1800.0, 600.0

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._level = [1000.0, 800.0]
        self._running = [False, False]
        self._seconds = 0

    def step(self) -> dict[str, Any]:
        rng = self._rng
        self._seconds += 1
        out: dict[str, Any] = {}
        for i in range(2):
            inflow = max(rng.gauss(6.0, 2.0), 0.0)
            self._level[i] += inflow - (25.0 if self._running[i] else 0.0)
            if self._level[i] >= self.START_MM:
                self._running[i] = True
            elif self._level[i] <= self.STOP_MM:
                self._running[i] = False
            n = i + 1
            out[f"Pump{n}.Level"] = round(self._level[i], 1)
            out[f"Pump{n}.Running"] = self._running[i]
            out[f"Pump{n}.Pressure"] = round(
                (2.4 + rng.gauss(0, 0.05)) if self._running[i] else 0.0, 2
            )
        out["Station.WellLevels"] = [round(v, 1) for v in self._level] + [0.0, 0.0]
        return out


async def _serve(args: argparse.Namespace) -> None:
    stop = stop_on_signals()
    users = dict(u.split(":", 1) for u in args.user)
    station = SimulatedPumpStation(
        host=args.host,
        port=args.port,
        secure=args.secure,
        pki_dir=args.pki_dir,
        users=users,
    )
    async with station:
        moving = asyncio.create_task(animate(station, PumpStationModel(args.seed)))
        secure = f", certificate {station.certificate}" if args.secure else ""
        print(f"pump station on {station.endpoint}{secure}; Ctrl-C stops", flush=True)
        await until_stopped(stop, [moving])
    print("stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drivers.simulated.opcua_server",
        description="Serve a simulated pump-station PLC over OPC-UA until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=4840, help="TCP port")
    parser.add_argument(
        "--secure", action="store_true", help="also offer Sign and SignAndEncrypt endpoints"
    )
    parser.add_argument(
        "--pki-dir",
        type=Path,
        default=Path("sim-pki"),
        help="server certificate and trusted client certificates (with --secure)",
    )
    parser.add_argument(
        "--user", action="append", default=[], help="USER:PASSWORD accepted (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the value dynamics")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
