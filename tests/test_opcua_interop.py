"""Interoperability with an independent OPC-UA stack: node-opcua (JavaScript), not asyncua.

Our driver, ``edge-agent browse`` and our simulated PLC are all built on asyncua; a bug on
both sides of one library would pass every other test. Here the peer is node-opcua, run by
Node.js as a real process on 127.0.0.1 (``tests/interop/``, pinned by its package-lock.json and
installed by ``scripts/setup``):

* ``opcua_server.js``: a server whose namespace index is not 2 and which advertises the
  machine's host name, not the 127.0.0.1 we dial; the test changes its values and reads back
  every Write it accepted (with the Variant's data type) over stdin/stdout;
* ``opcua_client.js``: a client that reads and subscribes to our simulated pump station.

Every wait is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from drivers.base import Quality, WriteRefused
from drivers.opcua import OpcUaDevice
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.pki import agent_identity
from drivers.simulated.opcua_server import NAMESPACE as SIM_NAMESPACE
from tests.opcua_support import (
    FAST,
    MakeDriver,
    all_of,
    driver_factory,
    has,
    latest,
    read_until,
)
from tests.support import free_port, run_cli, secret, terminate
from tests.test_opcua_driver import ThreadedStation

INTEROP = Path(__file__).resolve().parent / "interop"
USER, PASSWORD = "ops", secret("s3cret")

# browse name -> (node id in the server's own namespace, value it starts with, as a reading)
PLANT: dict[str, tuple[str, Any]] = {
    "Double": ("s=Interop.Double", 3.141592653589793),
    "Float": ("s=Interop.Float", 2.5),
    "Int16": ("s=Interop.Int16", -1234),
    "Int32": ("s=Interop.Int32", -123456789),
    "Int64": ("s=Interop.Int64", 2**53 + 1),  # every digit, which a double would lose
    "UInt16": ("s=Interop.UInt16", 65000),
    "UInt32": ("s=Interop.UInt32", 4_000_000_000),
    "Boolean": ("s=Interop.Boolean", True),
    "String": ("s=Interop.String", "Grüße aus node-opcua"),
    "DateTime": ("s=Interop.DateTime", "2024-03-18T07:30:00.250000Z"),
    "Interval": ("s=Interop.Interval", 1500.0),  # DataType Duration, a subtype of Double
    "Stamp": ("s=Interop.Stamp", "2025-01-02T03:04:05.000000Z"),  # UtcTime, of DateTime
    "Temperature": ("i=1001", 21.5),
    "Setpoint": ("i=1002", 42),  # Int16
    "Counter": ("i=1003", 7),  # UInt32
    "Running": ("i=1004", False),
}


# -- the node-opcua peers -------------------------------------------------------------------


def node_binary() -> str:
    """Node.js, with node-opcua installed next to the scripts; otherwise say how to get them."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: run scripts/setup (it installs nodejs)")
    if not (INTEROP / "node_modules" / "node-opcua" / "package.json").is_file():
        raise RuntimeError("node-opcua is missing: run scripts/setup (npm ci in tests/interop)")
    return node


class NodeOpcUaServer:
    """``tests/interop/opcua_server.js`` as a process on a loopback port; restartable on it.

    It exits when its stdin closes, so it never outlives the test process.
    """

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.pki = workdir / "server-pki"
        self.log = workdir / "node-opcua-server.log"
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}
        self.writes: list[dict[str, Any]] = []
        """Every Write of a client that the server accepted, in order: name, dataType, value."""
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ids = 0
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/interop"

    @property
    def namespace(self) -> str:
        return str(self.ready["namespace"])

    @property
    def certificate(self) -> Path:
        """The server's own certificate (PEM), made by node-opcua at its first start."""
        return Path(self.ready["certificate"])

    def start(self, timeout: float = 30) -> Self:
        args = ["--port", str(self.port), "--pki", str(self.pki), "--user", f"{USER}:{PASSWORD}"]
        self._answers = queue.Queue()
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [node_binary(), "opcua_server.js", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=INTEROP,
                text=True,
                encoding="utf-8",
                env={**os.environ, "NODE_NO_WARNINGS": "1"},
            )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        self.ready = self._answer(lambda e: e["event"] == "ready", timeout, "its start")
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                event = json.loads(line)
                if event["event"] == "write":
                    self.writes.append(event)
                else:
                    self._answers.put(event)
        self._answers.put({"event": "exit"})

    def _answer(self, wanted: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self._answers.get(timeout=left)
            except queue.Empty:
                break
            if event["event"] == "exit":
                raise AssertionError(f"node-opcua server exited during {what}: {self.output()}")
            if wanted(event):
                return event
        raise AssertionError(f"no answer from the node-opcua server within {timeout} s: {what}")

    def command(self, cmd: str, **args: Any) -> None:
        """Run a command in the server and wait (bounded) until it is done."""
        with self._lock:
            assert self.proc is not None and self.proc.stdin is not None
            self._ids += 1
            ident = self._ids
            self.proc.stdin.write(json.dumps({"id": ident, "cmd": cmd, **args}) + "\n")
            self.proc.stdin.flush()
            answer = self._answer(lambda e: e.get("id") == ident, 10, f"{cmd} {args}")
        assert answer["event"] == "done", f"node-opcua server: {cmd} {args}: {answer}"

    async def set(self, name: str, value: Any) -> None:
        """Change a variable as the device itself would (not through OPC-UA)."""
        await asyncio.to_thread(self.command, "set", name=name, value=value)

    async def trust(self, certificate: Path) -> None:
        """Trust a client certificate, as the server's administrator would."""
        await asyncio.to_thread(self.command, "trust", file=str(certificate))

    async def written(self, count: int, within: float = 5) -> list[dict[str, Any]]:
        """The writes, once ``count`` have arrived (they come in on their own line of stdout,
        maybe after the client had its answer); bounded."""
        for _ in range(int(within / 0.01)):
            if len(self.writes) >= count:
                break
            await asyncio.sleep(0.01)
        return self.writes

    def reset(self) -> None:
        self.command("reset")
        self.writes.clear()

    def kill(self) -> None:
        """SIGKILL: no goodbye on any connection, as when the device loses power."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
            self._forget()

    def stop(self) -> None:
        """Close its stdin: the server shuts down; SIGTERM, then SIGKILL, if it does not."""
        if self.proc is not None:
            self._forget(wait=True)

    def _forget(self, *, wait: bool = False) -> None:
        proc, self.proc = self.proc, None
        assert proc is not None and proc.stdin is not None
        proc.stdin.close()  # stdout belongs to the reader thread, which closes it at its end
        if wait:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                terminate(proc)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def node_client(*args: str, timeout: float = 30) -> tuple[int, list[dict[str, Any]]]:
    """Run ``tests/interop/opcua_client.js``; its exit code and JSON lines."""
    result = subprocess.run(
        [node_binary(), "opcua_client.js", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=INTEROP,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert lines, f"node-opcua client printed nothing ({result.returncode}): {result.stderr}"
    return result.returncode, lines


# -- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeOpcUaServer]:
    server = NodeOpcUaServer(tmp_path_factory.mktemp("node-opcua")).start()
    yield server
    server.stop()


@pytest.fixture
def server(node_server: NodeOpcUaServer) -> NodeOpcUaServer:
    """The node-opcua server with every variable at its start value, no writes seen."""
    node_server.reset()
    return node_server


@pytest.fixture
async def driver() -> AsyncIterator[MakeDriver]:
    async with driver_factory("plant") as make:
        yield make


async def namespace_index(endpoint: str, uri: str) -> int:
    """The index of namespace ``uri`` as a user finds it: read the server's NamespaceArray
    (``i=2255``) with the driver itself, then write point node ids as ``ns=<index>;...``."""
    device = OpcUaDevice.model_validate(
        {
            "id": "look",
            "opcua": {"endpoint": endpoint, "mode": "poll", **FAST},
            "points": [{"name": "ns", "node": "i=2255", "array": "flatten"}],
        }
    )
    look = OpcUaDriver(device)
    try:
        readings = await look.read()
    finally:
        await look.aclose()
    uris = [r.value for r in readings if r.quality is Quality.GOOD]
    assert uri in uris, readings
    return uris.index(uri)


def plant_points(ns: int, names: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"name": name.lower(), "node": f"ns={ns};{PLANT[name][0]}"} for name in names or PLANT]


def der(pem_or_der: Path) -> bytes:
    data = pem_or_der.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
    return data


# -- our driver against node-opcua ----------------------------------------------------------


async def test_poll_reads_every_type_by_string_and_numeric_node_id(
    server: NodeOpcUaServer, driver: MakeDriver
) -> None:
    ns = await namespace_index(server.endpoint, server.namespace)
    assert ns == server.ready["namespaceIndex"] and ns != 2  # nothing assumes index 2
    points = [
        *plant_points(ns),
        {"name": "by_uri", "node": f"nsu={server.namespace};i=1003"},
        {"name": "by_path", "path": f"0:Objects/{ns}:Plant/{ns}:Counter"},
    ]
    plant = driver(server.endpoint, points, mode="poll")
    before = time.time()
    readings = await plant.read()  # the first read waits for the session
    assert [r.point for r in readings] == [p["name"] for p in points]
    assert all(r.quality is Quality.GOOD and r.reason is None for r in readings), readings
    got = {r.point: r.value for r in readings}
    expected = {name.lower(): value for name, (_, value) in PLANT.items()}
    assert got == {**expected, "by_uri": 7, "by_path": 7}
    # the types survive, not only the values: 2**53 + 1 is no float, 2.5 no int
    assert type(got["int64"]) is int and type(got["float"]) is float
    assert type(got["boolean"]) is bool and type(got["uint32"]) is int
    assert all(before <= r.ts <= time.time() for r in readings)

    await server.set("Temperature", -3.25)
    await server.set("Int64", str(-(2**63)))
    again = latest(await plant.read())
    assert (again["temperature"].value, again["int64"].value) == (-3.25, -(2**63))


async def test_subscribe_gets_each_change_within_about_one_sampling_interval(
    server: NodeOpcUaServer, driver: MakeDriver
) -> None:
    ns = await namespace_index(server.endpoint, server.namespace)
    sampling_s = 0.2
    points = [
        {"name": "temperature", "node": f"ns={ns};i=1001", "sampling_ms": sampling_s * 1000},
        {"name": "string", "node": f"ns={ns};s=Interop.String"},
        {"name": "int64", "node": f"ns={ns};s=Interop.Int64"},
    ]
    # subscribe is the default mode; keep-alives twice a second, or the session counts as dead
    plant = driver(server.endpoint, points, poll_s=sampling_s, keepalive_s=1.0)
    first = await read_until(plant, all_of(*(has(p["name"]) for p in points)))
    assert {r.point: r.value for r in first} == {
        "temperature": 21.5,
        "string": "Grüße aus node-opcua",
        "int64": 2**53 + 1,
    }
    delays = []
    for i in range(6):
        value = 30.0 + i / 4
        await server.set("Temperature", value)
        changed = time.monotonic()
        seen = await read_until(plant, has("temperature", value), within=3, every=0.01)
        delays.append(time.monotonic() - changed)
        (reading,) = [r for r in seen if r.point == "temperature"]  # no repeats, no others
        assert abs(reading.ts - time.time()) < 2  # stamped at the source, on this machine
    # sampled every 200 ms and published every 100 ms: a change arrives within one sampling
    # interval plus one publishing interval, and some slack for a busy machine
    assert statistics.median(delays) < sampling_s + 0.15, delays
    assert max(delays) < sampling_s + 0.5, delays

    await server.set("String", "neu")
    await server.set("Int64", "-5")
    await read_until(plant, all_of(has("string", "neu"), has("int64", -5)))

    # nothing changes for two and a half keep-alive periods: node-opcua's keep-alives
    # hold the session (no change, no reading, no reconnect)
    await asyncio.sleep(2.5)
    assert await plant.read() == []
    assert (plant.stats.sessions, plant.stats.losses, plant.stats.link) == (1, 0, "up")


async def test_writes_reach_the_server_as_the_node_data_type(
    server: NodeOpcUaServer, driver: MakeDriver
) -> None:
    ns = await namespace_index(server.endpoint, server.namespace)
    plant = driver(server.endpoint, plant_points(ns), mode="poll")
    await plant.read()
    # (point, value written, Variant type the server received, value the server holds)
    cases = [
        ("int16", 40.0, "Int16", 40),  # a whole float into an integer node
        ("int32", -7, "Int32", -7),
        ("int64", 2**62 + 5, "Int64", str(2**62 + 5)),
        ("uint16", 1, "UInt16", 1),
        ("uint32", 2**32 - 1, "UInt32", 2**32 - 1),
        ("float", 0.5, "Float", 0.5),
        ("double", 12.75, "Double", 12.75),
        ("boolean", False, "Boolean", False),
        ("running", 1, "Boolean", True),  # 0/1 into a Boolean node
        ("string", "hello", "String", "hello"),
        ("datetime", "2026-05-01T06:30:00.250Z", "DateTime", "2026-05-01T06:30:00.250Z"),
        ("interval", 2500, "Double", 2500),  # Duration: the Variant of its base type
        ("stamp", 1767225600, "DateTime", "2026-01-01T00:00:00.000Z"),  # UtcTime
        ("setpoint", 99, "Int16", 99),  # numeric node id
    ]
    for point, value, _, _ in cases:
        await plant.write(point, value)
    names = {name.lower(): name for name in PLANT}
    assert await server.written(len(cases)) == [
        {"event": "write", "name": names[point], "dataType": vtype, "value": held}
        for point, _, vtype, held in cases
    ]
    now = latest(await plant.read())
    assert (now["int16"].value, now["int64"].value, now["stamp"].value) == (
        40,
        2**62 + 5,
        "2026-01-01T00:00:00.000000Z",
    )

    with pytest.raises(WriteRefused, match=r"int16: 40000 is out of range for Int16"):
        await plant.write("int16", 40000)
    with pytest.raises(WriteRefused, match=r"string: String node takes text"):
        await plant.write("string", 5)
    await plant.write("setpoint", 1)  # a last one, to know the server had said all
    assert len(await server.written(len(cases) + 1)) == len(cases) + 1  # nothing refused


async def test_username_and_password_on_an_unsecured_channel(
    server: NodeOpcUaServer, driver: MakeDriver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ns = await namespace_index(server.endpoint, server.namespace)
    (tmp_path / "good.pass").write_text(f"{PASSWORD}\n")
    (tmp_path / "bad.pass").write_text(secret("guess-again") + "\n")
    points = plant_points(ns, ["Temperature"])
    common = {"username": USER, "mode": "poll"}
    ok = driver(server.endpoint, points, password_file=tmp_path / "good.pass", **common)
    assert [(r.quality, r.value) for r in await ok.read()] == [(Quality.GOOD, 21.5)]

    caplog.set_level(logging.WARNING, logger="drivers.opcua")
    refused = driver(server.endpoint, points, password_file=tmp_path / "bad.pass", **common)
    (reading,) = await refused.read()
    assert reading.quality is Quality.STALE
    assert reading.reason == "disconnected (BadUserAccessDenied)"
    assert f"the server refused user '{USER}' (BadUserAccessDenied)" in caplog.text
    assert "guess-again" not in caplog.text


async def test_secure_session_once_each_side_trusts_the_other(
    server: NodeOpcUaServer, driver: MakeDriver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The technician's steps of drivers/opcua/README.md, against a server we did not write."""
    caplog.set_level(logging.WARNING, logger="drivers.opcua")
    ns = await namespace_index(server.endpoint, server.namespace)
    agent_pki = tmp_path / "agent-pki"
    security = {"policy": "Basic256Sha256", "mode": "SignAndEncrypt"}
    points = plant_points(ns, ["Temperature", "Setpoint"])
    plant = driver(server.endpoint, points, security=security, pki_dir=agent_pki, mode="poll")

    # 1. the agent does not know the server's certificate: it files it under rejected/
    seen = await plant.read()
    assert seen[0].reason == "disconnected (server certificate not trusted)"
    (rejected,) = (agent_pki / "rejected").iterdir()
    assert rejected.read_bytes() == der(server.certificate)
    rejected.rename(agent_pki / "trusted" / rejected.name)  # the technician checked it

    # 2. the server does not know the agent's certificate: it refuses the secure channel
    cert = agent_pki / "own" / "cert.der"
    await read_until(plant, has("temperature", quality=Quality.STALE), within=3)
    refusal = "disconnected (secure channel refused)"
    await read_until(plant, lambda rs: rs[-1].reason == refusal, within=5)
    assert f"give {cert} to the server's administrator to trust" in caplog.text

    # 3. the server's administrator trusts it: the driver connects by itself
    await server.trust(cert)
    await read_until(plant, has("temperature", 21.5), within=5)
    await plant.write("setpoint", 7)
    assert await server.written(1) == [
        {"event": "write", "name": "Setpoint", "dataType": "Int16", "value": 7}
    ]


@pytest.mark.parametrize(
    "policy", ["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
)
@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_every_secure_endpoint_reads_subscribes_and_writes(
    server: NodeOpcUaServer, driver: MakeDriver, tmp_path: Path, policy: str, mode: str
) -> None:
    ns = await namespace_index(server.endpoint, server.namespace)
    agent_pki = tmp_path / "agent-pki"
    (agent_pki / "trusted").mkdir(parents=True)
    (agent_pki / "trusted" / "server.pem").write_bytes(server.certificate.read_bytes())
    points = plant_points(ns, ["Temperature", "Setpoint", "String"])
    options = {"security": {"policy": policy, "mode": mode}, "pki_dir": agent_pki}
    plant = driver(server.endpoint, points, **options)
    await server.trust(agent_identity(plant.conn).cert)
    await read_until(plant, all_of(has("temperature", 21.5), has("string")), within=5)
    await server.set("Temperature", 22.0)
    await read_until(plant, has("temperature", 22.0), within=3)
    await plant.write("setpoint", -3)
    assert await server.written(1) == [
        {"event": "write", "name": "Setpoint", "dataType": "Int16", "value": -3}
    ]


@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_the_driver_recovers_when_the_server_is_killed_and_restarted(
    tmp_path: Path, driver: MakeDriver, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    caplog.set_level(logging.INFO, logger="drivers.opcua")
    server = NodeOpcUaServer(tmp_path).start()
    try:
        ns = await namespace_index(server.endpoint, server.namespace)
        points = plant_points(ns, ["Temperature", "String"])
        plant = driver(server.endpoint, points, poll_s=0.1, mode=mode)
        await read_until(plant, all_of(has("temperature", 21.5), has("string")))

        server.kill()
        down = await read_until(plant, has("string", quality=Quality.STALE), within=5)
        stale = [r for r in down if r.quality is Quality.STALE]
        assert {r.point for r in stale} == {"temperature", "string"}
        assert all(r.value is None and (r.reason or "").startswith("disconnected") for r in stale)
        # while down: only stale readings, never a value from nowhere
        for _ in range(5):
            assert {r.quality for r in await plant.read()} <= {Quality.STALE}
            await asyncio.sleep(0.1)

        await asyncio.to_thread(server.start)  # the same port, a new process
        restarted = time.monotonic()
        await read_until(plant, has("temperature", 21.5), within=5)
        assert time.monotonic() - restarted < 3  # the backoff is capped at 0.5 s
        await server.set("Temperature", 19.0)  # a new subscription, or a new read, sees it
        await read_until(plant, has("temperature", 19.0), within=3)
    finally:
        server.stop()
    assert caplog.text.count("opcua plant: connection lost") == 1
    assert "opcua plant: back after" in caplog.text


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node["children"]:
        yield from walk(child)


def test_browse_cli_prints_the_node_opcua_variables(server: NodeOpcUaServer) -> None:
    ns = server.ready["namespaceIndex"]
    result = run_cli("edge-agent", "browse", server.endpoint, "--depth", "2", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    nodes = {n["node_id"]: n for n in walk(out["tree"])}
    plant = nodes[f"ns={ns};s=Plant"]
    assert (plant["class"], plant["path"]) == ("Object", f"0:Objects/{ns}:Plant")
    types = {
        "Double": "Double",
        "Int64": "Int64",
        "UInt32": "UInt32",
        "String": "String",
        "DateTime": "DateTime",
        "Interval": "Duration",
        "Stamp": "UtcTime",
        "Setpoint": "Int16",
    }
    for name, data_type in types.items():
        node_id, value = PLANT[name]
        node = nodes[f"ns={ns};{node_id}"]
        assert (node["display_name"], node["data_type"], node["value"], node["status"]) == (
            name,
            data_type,
            value,
            None,
        )
        assert node["path"] == f"0:Objects/{ns}:Plant/{ns}:{name}"
    assert "i=2253" not in nodes  # the standard Server object is left out
    assert len([n for n in plant["children"] if n["class"] == "Variable"]) == len(PLANT)

    tree = run_cli("edge-agent", "browse", server.endpoint, "--node", f"ns={ns};s=Plant")
    assert tree.returncode == 0, tree.stderr
    assert f"Temperature  ns={ns};i=1001  Double = 21.5" in tree.stdout
    assert f"String  ns={ns};s=Interop.String  String = 'Grüße aus node-opcua'" in tree.stdout
    assert f"{len(PLANT) + 1} node(s) on {server.endpoint}" in tree.stdout


# -- node-opcua's client against our simulated PLC ------------------------------------------


@pytest.fixture(scope="module")
def station() -> Iterator[ThreadedStation]:
    """Our simulated pump station (asyncua), values still."""
    sim = ThreadedStation()
    yield sim
    sim.close()


@pytest.fixture(scope="module")
def secure_station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedStation]:
    """Our simulated pump station with Sign and SignAndEncrypt endpoints and a trust list.

    Its None endpoint is not used: asyncua's server checks the certificate a client sends in
    CreateSession even there (where OPC-UA Part 4, 5.7.2.2 says to ignore it), and node-opcua
    always sends one.
    """
    sim = ThreadedStation(secure=True, pki_dir=tmp_path_factory.mktemp("sim-pki"))
    yield sim
    sim.close()


STATION_READS = {
    "ns={ns};s=Pump1.Level": ("Double", 1000.0),
    "ns={ns};i=1042": ("Boolean", False),
    "ns={ns};s=Pump1.Pressure": ("Float", 0.0),
    "ns={ns};s=Pump1.Speed": ("Int16", 0),
    "ns={ns};s=Pump2.RunHours": ("UInt32", 3668),
    "ns={ns};s=Station.Name": ("String", "PS-07 Riverside"),
    "ns={ns};s=Station.LastService": ("DateTime", "2024-03-18T07:30:00.000Z"),
    "ns={ns};s=Station.WellLevels": ("Double", [1000.0, 800.0, 0.0, 0.0]),
    "ns={ns};g=5b0e8b6a-1f3c-4c7e-9a55-0d1c2f3e4a5b": ("Int32", 1),
    "ns={ns};b=U0VSSUFM": ("String", "PS07-2291"),
}


async def test_node_opcua_client_reads_and_subscribes_to_our_simulated_plc(
    station: ThreadedStation, tmp_path: Path
) -> None:
    await station.reset()
    reads = [arg for node in STATION_READS for arg in ("--read", node)]
    common = ["--endpoint", station.endpoint, "--namespace", SIM_NAMESPACE]
    common += ["--pki", str(tmp_path / "client-pki")]
    proc = await asyncio.create_subprocess_exec(
        node_binary(),
        "opcua_client.js",
        *common,
        *reads,
        *("--watch", "ns={ns};s=Pump1.Level", "--changes", "2", "--timeout-ms", "10000"),
        cwd=INTEROP,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
    )
    assert proc.stdout is not None
    try:
        events = []
        async with asyncio.timeout(20):
            while not events or events[-1]["event"] != "change":  # the current value
                events.append(json.loads(await proc.stdout.readline()))
            await station.set("Pump1.Level", 1234.5)  # as the PLC's own logic would
            while events[-1]["event"] != "result":
                events.append(json.loads(await proc.stdout.readline()))
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    result = events[-1]
    assert result["error"] is None and result["namespaceIndex"] == 2
    assert result["values"] == {
        node: {"dataType": vtype, "value": value, "status": "Good"}
        for node, (vtype, value) in STATION_READS.items()
    }
    changes = [(e["dataType"], e["value"]) for e in events if e["event"] == "change"]
    assert changes == [("Double", 1000.0), ("Double", 1234.5)]


async def test_node_opcua_client_on_a_secure_endpoint_once_our_plc_trusts_it(
    secure_station: ThreadedStation, tmp_path: Path
) -> None:
    station = secure_station
    await station.reset()
    pki = tmp_path / "client-pki"
    (pki / "trusted" / "certs").mkdir(parents=True)
    shutil.copy(station.certificate, pki / "trusted" / "certs" / "edgefleet-sim.der")
    args = ["--endpoint", station.endpoint, "--namespace", SIM_NAMESPACE, "--pki", str(pki)]
    args += ["--security", "Basic256Sha256,SignAndEncrypt", "--read", "ns={ns};s=Station.Name"]

    code, lines = await asyncio.to_thread(node_client, *args)
    assert code == 1 and lines[-1]["error"]  # our PLC does not know this client yet
    client_cert = Path(lines[-1]["certificate"])
    (tmp_path / "node-client.der").write_bytes(der(client_cert))
    await station.trust(tmp_path / "node-client.der")

    code, lines = await asyncio.to_thread(node_client, *args)
    assert code == 0, lines
    (value,) = lines[-1]["values"].values()
    assert value == {"dataType": "String", "value": "PS-07 Riverside", "status": "Good"}
