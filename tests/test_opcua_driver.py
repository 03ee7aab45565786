"""The OPC-UA driver against real asyncua servers (the simulated pump station) on 127.0.0.1.

Nothing is mocked: values change on the server, reads are counted where they arrive, a dead
link is a relay on a real socket that stops passing bytes, certificates are real files.
Every wait is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from drivers.base import DeviceUnavailable, Quality, Reading, WriteRefused
from drivers.opcua.pki import agent_identity
from drivers.simulated.opcua_server import SimulatedPumpStation
from edge_agent.polling import DevicePoller
from tests.opcua_support import MakeDriver, driver_factory, has, latest, read_until
from tests.support import free_port, secret

T = TypeVar("T")


POINTS = [
    {"name": "level", "node": "ns=2;s=Pump1.Level", "unit": "mm"},
    {"name": "running", "node": "ns=2;i=1042"},
    {"name": "pressure", "node": "ns=2;s=Pump1.Pressure", "unit": "bar"},
]


class ThreadedStation:
    """A simulated pump station served from its own thread and event loop.

    Starting asyncua's server costs about two seconds (it builds the whole standard address
    space), so the tests of this module share one plain and one secure station, reset
    before each test. Drivers run in each test's own loop and reach it over TCP.
    """

    def __init__(self, **options: Any) -> None:
        self.station = SimulatedPumpStation(port=free_port(), clock=False, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.station.start(), self._loop).result(30)

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), 10)

    @property
    def endpoint(self) -> str:
        return self.station.endpoint

    @property
    def port(self) -> int:
        return self.station.port

    @property
    def certificate(self) -> Path:
        return self.station.certificate

    @property
    def trusted_dir(self) -> Path:
        return self.station.trusted_dir

    @property
    def reads(self) -> list[int]:
        return self.station.reads

    async def set(self, key: str, value: Any, source_time: datetime | None = None) -> None:
        await self._call(self.station.set(key, value, source_time))

    async def set_status(self, key: str, status: str) -> None:
        await self._call(self.station.set_status(key, status))

    async def get(self, key: str) -> Any:
        return await self._call(self.station.get(key))

    async def variant(self, key: str) -> str:
        value = await self._call(self.station.node(key).read_data_value())
        assert value.Value is not None
        return str(value.Value.VariantType.name)

    async def trust(self, certificate: Path) -> None:
        await self._call(self.station.trust(certificate))

    async def reset(self) -> None:
        await self._call(self.station.reset())

    async def _shutdown(self) -> None:
        await self.station.stop()
        # server-side sessions of links the tests cut wait for their timeout; end them
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


@pytest.fixture(scope="module")
def plain_station() -> Iterator[ThreadedStation]:
    station = ThreadedStation()
    yield station
    station.close()


@pytest.fixture(scope="module")
def secure_station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedStation]:
    pki_dir = tmp_path_factory.mktemp("plc-pki")
    station = ThreadedStation(secure=True, pki_dir=pki_dir, users={"ops": secret("s3cret")})
    yield station
    station.close()


@pytest.fixture
async def opcua_server(plain_station: ThreadedStation) -> ThreadedStation:
    """The pump station on 127.0.0.1, every value as it starts."""
    await plain_station.reset()
    return plain_station


@pytest.fixture
async def secure_server(secure_station: ThreadedStation) -> ThreadedStation:
    """The pump station with Sign and SignAndEncrypt endpoints and user ops:s3cret."""
    await secure_station.reset()
    return secure_station


@pytest.fixture
async def driver() -> AsyncIterator[MakeDriver]:
    async with driver_factory("pumps", POINTS) as make:
        yield make


# -- subscribe and poll ------------------------------------------------------------------


async def test_a_server_clock_far_off_is_not_believed(
    opcua_server: ThreadedStation, driver: MakeDriver, caplog: pytest.LogCaptureFixture
) -> None:
    """A PLC whose backup battery died wakes up in 2000: its changes are stamped on arrival
    (the outbox would drop them as 26 years old), and the log says so once."""
    sim = opcua_server
    pumps = driver(sim.endpoint, poll_s=0.2)
    await read_until(pumps, has("level"))
    wrong = datetime(2000, 1, 1, tzinfo=UTC)
    for i in range(2):
        wall = time.time()
        await sim.set("Pump1.Level", 3000.0 + i, source_time=wrong)
        seen = await read_until(pumps, has("level", 3000.0 + i), within=2, every=0.01)
        reading = next(r for r in seen if r.point == "level" and r.value == 3000.0 + i)
        assert abs(reading.ts - wall) < 1.0
    said = [r for r in caplog.records if "clock is" in r.getMessage()]
    assert len(said) == 1 and "off the gateway's" in said[0].getMessage()


async def test_subscribed_changes_arrive_within_one_sampling_interval(
    opcua_server: ThreadedStation, driver: MakeDriver
) -> None:
    sim = opcua_server
    await asyncio.sleep(0.3)  # the values were set (and source-stamped) by the reset
    started = time.time()
    pumps = driver(sim.endpoint, poll_s=0.2)  # sampling interval 200 ms
    first = await read_until(pumps, lambda s: {"level", "running", "pressure"} <= set(latest(s)))
    assert latest(first)["level"].value == 1000.0
    # a first value is the current value, read now: stamped on arrival, not when it last
    # changed (which may be days ago, before the stale marks of an outage that just ended)
    assert all(r.ts >= started for r in first)
    latencies = []
    for i, pause in enumerate((0.03, 0.11, 0.17, 0.07, 0.19, 0.13)):
        await asyncio.sleep(pause)  # land anywhere in the publishing cycle
        wall, t0 = time.time(), time.monotonic()
        await sim.set("Pump1.Level", 2000.0 + i)
        seen = await read_until(pumps, has("level", 2000.0 + i), within=2, every=0.005)
        latencies.append(time.monotonic() - t0)
        reading = next(r for r in seen if r.point == "level" and r.value == 2000.0 + i)
        assert abs(reading.ts - wall) < 0.05  # the server's SourceTimestamp, not arrival
        assert reading.unit == "mm" and reading.reason is None
    # One sampling interval, plus a few ms for this test's own 5 ms read loop.
    print(f"latencies: {', '.join(f'{x * 1000:.0f} ms' for x in latencies)}")
    assert max(latencies) <= 0.2 + 0.02, latencies


async def test_polled_values_at_the_poll_rate_one_read_call_per_poll(
    opcua_server: ThreadedStation, driver: MakeDriver
) -> None:
    sim = opcua_server
    pumps = driver(sim.endpoint, poll_s=0.1, mode="poll")
    batches: list[list[Reading]] = []

    async def sink(readings: list[Reading]) -> None:
        batches.append(readings)

    poller = DevicePoller(pumps.device, [(p["name"], p.get("unit")) for p in POINTS], pumps, sink)
    await sim.set("Pump1.Level", 1234.5)
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(0.05)  # connected, first poll made
    sim.reads.clear()
    polls_before = len(batches)
    await asyncio.sleep(1.0)
    polls = len(batches) - polls_before
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert 9 <= polls <= 11, polls
    assert sim.reads.count(len(POINTS)) >= polls - 1  # one Read service call per poll
    assert all(n == len(POINTS) for n in sim.reads)
    for batch in batches:
        assert [r.point for r in batch] == ["level", "running", "pressure"]
        assert all(r.quality is Quality.GOOD for r in batch)
    assert batches[-1][0].value == 1234.5
    assert poller.health.overruns == 0


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_a_missing_node_is_bad_and_the_others_keep_updating(
    opcua_server: ThreadedStation, driver: MakeDriver, mode: str
) -> None:
    sim = opcua_server
    points = [
        *POINTS,
        {"name": "ghost", "node": "ns=2;s=Pump9.Level"},
        {"name": "lost", "path": "0:Objects/2:Pump9/2:Level"},
    ]
    pumps = driver(sim.endpoint, points, mode=mode)
    for value in (1500.0, 1600.0, 1700.0):
        await sim.set("Pump1.Level", value)
        seen = await read_until(pumps, has("level", value))
        now = latest(seen)
        assert now["ghost"].quality is Quality.BAD and now["ghost"].value is None
        assert now["ghost"].reason == "BadNodeIdUnknown"
        assert now["lost"].quality is Quality.BAD
        assert now["lost"].reason == "browse path 0:Objects/2:Pump9/2:Level not found (BadNoMatch)"
    # bad points are reported at every read, so the center sees they stay bad
    again = await pumps.read()
    assert {r.point for r in again if r.quality is Quality.BAD} == {"ghost", "lost"}


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_every_value_type_and_node_id_form(
    opcua_server: ThreadedStation, driver: MakeDriver, mode: str
) -> None:
    sim = opcua_server
    points = [
        {"name": "level", "path": "0:Objects/2:Pump1/2:Level"},
        {"name": "running", "node": "ns=2;i=1042"},
        {"name": "pressure", "node": "ns=2;s=Pump1.Pressure"},
        {"name": "speed", "node": "ns=2;s=Pump1.Speed"},
        {"name": "hours", "node": "ns=2;s=Pump1.RunHours"},
        {"name": "station", "node": "nsu=urn:edgefleet:sim:pump-station;s=Station.Name"},
        {"name": "serviced", "node": "ns=2;s=Station.LastService"},
        {"name": "wells", "node": "ns=2;s=Station.WellLevels"},
        {"name": "well", "node": "ns=2;s=Station.WellLevels", "array": "flatten"},
        {"name": "mode", "node": "ns=2;g=5b0e8b6a-1f3c-4c7e-9a55-0d1c2f3e4a5b"},
        {"name": "serial", "node": "ns=2;b=U0VSSUFM"},
        {"name": "elsewhere", "node": "nsu=urn:not:here;s=X"},
    ]
    pumps = driver(sim.endpoint, points, mode=mode)
    seen = await read_until(pumps, lambda s: {"serial", "well.3", "level"} <= set(latest(s)))
    got = {r.point: (r.quality.value, r.value) for r in latest(seen).values()}
    assert got == {
        "level": ("good", 1000.0),
        "running": ("good", False),
        "pressure": ("good", 0.0),
        "speed": ("good", 0),
        "hours": ("good", 1834),
        "station": ("good", "PS-07 Riverside"),
        "serviced": ("good", "2024-03-18T07:30:00.000000Z"),
        "wells": ("bad", None),
        "well.0": ("good", 1000.0),
        "well.1": ("good", 800.0),
        "well.2": ("good", 0.0),
        "well.3": ("good", 0.0),
        "mode": ("good", 1),
        "serial": ("good", "PS07-2291"),
        "elsewhere": ("bad", None),
    }
    reasons = {r.point: r.reason for r in latest(seen).values()}
    assert reasons["wells"] == (
        "array value not supported (4 elements, float); "
        "set array: flatten on the point for one reading per element"
    )
    assert reasons["elsewhere"] == "namespace urn:not:here not on the server"
    assert type(got["hours"][1]) is int and type(got["running"][1]) is bool


async def test_status_codes_become_quality(
    opcua_server: ThreadedStation, driver: MakeDriver
) -> None:
    sim = opcua_server
    pumps = driver(sim.endpoint)
    await read_until(pumps, has("level"))
    await sim.set_status("Pump1.Level", "BadSensorFailure")
    seen = await read_until(pumps, has("level", quality=Quality.BAD))
    bad = latest(seen)["level"]
    assert (bad.value, bad.reason) == (None, "BadSensorFailure")
    again = await read_until(pumps, has("level", quality=Quality.BAD), within=1)
    assert latest(again)["level"].reason == "BadSensorFailure"  # repeated while it stays bad
    await sim.set_status("Pump1.Level", "UncertainLastUsableValue")  # the PLC lost its sensor
    seen = await read_until(pumps, has("level", 1000.0, quality=Quality.STALE))
    remembered = latest(seen)["level"]
    assert (remembered.quality, remembered.reason) == (Quality.STALE, "UncertainLastUsableValue")
    later = await pumps.read()
    assert "level" not in {r.point for r in later}  # no longer bad: not repeated
    await sim.set_status("Pump1.Level", "UncertainEngineeringUnitsExceeded")  # live, if odd
    seen = await read_until(pumps, has("level", 1000.0))
    live = latest(seen)["level"]
    assert (live.quality, live.reason) == (Quality.GOOD, "UncertainEngineeringUnitsExceeded")


async def test_absolute_deadband(opcua_server: ThreadedStation, driver: MakeDriver) -> None:
    sim = opcua_server
    points = [{"name": "level", "node": "ns=2;s=Pump1.Level", "deadband": {"abs": 5}}]
    pumps = driver(sim.endpoint, points, poll_s=0.05)
    await read_until(pumps, has("level", 1000.0))
    for value in (1002.0, 1004.0, 999.0, 1010.0):
        await sim.set("Pump1.Level", value)
    seen = await read_until(pumps, has("level", 1010.0))
    await asyncio.sleep(0.2)
    seen += await pumps.read()
    assert [r.value for r in seen if r.point == "level"] == [1010.0]


async def test_changes_beyond_queue_max_are_dropped_oldest_first_and_counted(
    opcua_server: ThreadedStation, driver: MakeDriver
) -> None:
    sim = opcua_server
    points = [{"name": "level", "node": "ns=2;s=Pump1.Level", "queue_size": 50}]
    pumps = driver(sim.endpoint, points, poll_s=1.0, queue_max=5)
    await read_until(pumps, has("level", 1000.0))
    for i in range(20):
        await sim.set("Pump1.Level", float(i))
    await asyncio.sleep(1.5)  # one publishing interval: all 20 queued server-side go out
    kept = [r.value for r in await pumps.read()]
    assert kept == [15.0, 16.0, 17.0, 18.0, 19.0]
    assert pumps.stats.overflow == 15
    assert pumps.stats.changes >= 21


# -- writes ---------------------------------------------------------------------------------


async def test_writes_use_the_node_data_type(
    opcua_server: ThreadedStation, driver: MakeDriver
) -> None:
    sim = opcua_server
    points = [
        *POINTS,
        {"name": "speed", "node": "ns=2;s=Pump1.Speed"},
        {"name": "siren", "path": "0:Objects/2:Station/2:Alarm"},
        {"name": "ghost", "node": "ns=2;s=Nope"},
    ]
    pumps = driver(sim.endpoint, points)
    await read_until(pumps, has("level"))
    await pumps.write("speed", 55.0)  # a whole float goes into the Int16 node as 55
    assert await sim.get("Pump1.Speed") == 55
    assert await sim.variant("Pump1.Speed") == "Int16"
    await pumps.write("siren", True)
    assert await sim.get("Station.Alarm") is True
    with pytest.raises(WriteRefused, match=r"speed: 40000 is out of range for Int16"):
        await pumps.write("speed", 40000)
    with pytest.raises(WriteRefused, match=r"speed: Int16 node takes a whole number, not 1\.5"):
        await pumps.write("speed", 1.5)
    with pytest.raises(WriteRefused, match=r"running: Bad(UserAccessDenied|NotWritable)"):
        await pumps.write("running", True)  # read-only on the server
    with pytest.raises(WriteRefused, match="ghost: BadNodeIdUnknown"):
        await pumps.write("ghost", 1)
    with pytest.raises(WriteRefused, match="pumps has no point 'nope'"):
        await pumps.write("nope", 1)
    assert await sim.get("Pump1.Speed") == 55


# -- losing the server ------------------------------------------------------------------------


class Relay:
    """A TCP relay between driver and server that can go silent, as a link does when a cable
    is pulled or a firewall drops packets: nothing flows, and no connection is closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.silent = False
        self.listen = free_port()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if not self.silent:
                    dst.write(data)

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_a_silent_link_is_detected_and_the_session_replaced(
    opcua_server: ThreadedStation, driver: MakeDriver, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    sim = opcua_server
    relay = await Relay(sim.port).start()
    try:
        endpoint = f"opc.tcp://127.0.0.1:{relay.listen}/edgefleet/sim"
        pumps = driver(endpoint, mode=mode, keepalive_s=1.0, timeout_s=1.0)
        await read_until(pumps, has("level"))
        caplog.set_level(logging.INFO, "drivers.opcua")
        relay.silent = True
        t0 = time.monotonic()
        await read_until(pumps, has("level", quality=Quality.STALE), within=6)
        detected = time.monotonic() - t0
        assert detected < 1.0 + 1.0 + 0.5  # keepalive_s, or one request's timeout_s (poll)
        relay.silent = False
        await sim.set("Pump1.Level", 1111.0)
        await read_until(pumps, has("level", 1111.0), within=6)
        assert pumps.stats.losses == 1 and pumps.stats.sessions == 2
        lost = [r.message for r in caplog.records if "connection lost" in r.message]
        if mode == "subscribe":
            assert lost == ["opcua pumps: connection lost: no keep-alive from the server for 1 s"]
        else:
            assert lost == ["opcua pumps: connection lost: timeout"]
        assert sum("back after" in r.message for r in caplog.records) == 1
    finally:
        await relay.stop()


async def test_no_server_costs_capped_backoff_and_one_log_line(
    driver: MakeDriver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "drivers.opcua")
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/nothing"  # nothing listens there
    pumps = driver(endpoint, reconnect_min_s=0.05, reconnect_max_s=0.2)
    started = time.monotonic()
    seen = await read_until(pumps, lambda s: time.monotonic() - started > 1.5, within=3)
    assert {r.quality for r in seen} == {Quality.STALE}
    assert {r.reason for r in seen} == {"disconnected (connection refused)"}
    # waits 0.05, 0.1, 0.2, 0.2, ... (each ±25 %): about 9 attempts in 1.5 s, not hundreds
    assert 6 <= pumps.stats.failed_attempts <= 12, pumps.stats.failed_attempts
    assert [r.message for r in caplog.records] == [
        "opcua pumps: cannot connect: connection refused"
    ]


async def test_stale_readings_and_no_writes_while_the_server_is_down(driver: MakeDriver) -> None:
    sim = SimulatedPumpStation(port=free_port(), clock=False)
    await sim.start()
    try:
        pumps = driver(sim.endpoint, mode="subscribe")
        await read_until(pumps, has("level"))
        await sim.stop()
        seen = await read_until(pumps, has("level", quality=Quality.STALE), within=5)
        stale = [r for r in seen if r.quality is Quality.STALE]
        assert {r.point for r in stale} == {"level", "running", "pressure"}
        assert all(r.value is None and (r.reason or "").startswith("disconnected") for r in stale)
        with pytest.raises(DeviceUnavailable, match="disconnected"):
            await pumps.write("level", 1.0)
        await sim.start()  # the same port
        await sim.set("Pump1.Level", 1357.0)
        await read_until(pumps, has("level", 1357.0), within=6)
    finally:
        await sim.stop()


async def test_closing_leaves_no_task_behind(
    opcua_server: ThreadedStation, driver: MakeDriver
) -> None:
    sim = opcua_server
    before = asyncio.all_tasks()
    for mode in ("subscribe", "poll"):
        pumps = driver(sim.endpoint, mode=mode)
        await read_until(pumps, has("level"))
        await pumps.aclose()
        with pytest.raises(DeviceUnavailable):
            await pumps.read()
    await asyncio.sleep(0.1)
    assert {t.get_name() for t in asyncio.all_tasks() - before} == set()


# -- security -----------------------------------------------------------------------------


def secure(tmp_path: Path, policy: str = "Basic256Sha256", mode: str = "SignAndEncrypt") -> Any:
    """Driver options for the secure station: security, the agent's pki, user ops."""
    (tmp_path / "pass").write_text("s3cret\n")
    return {
        "security": {"policy": policy, "mode": mode},
        "pki_dir": tmp_path / "agent",
        "username": "ops",
        "password_file": tmp_path / "pass",
    }


def trust_both_ways(sim: ThreadedStation, agent_pki: Path, conn: Any) -> Path:
    """What a technician and the PLC's administrator do: exchange certificates."""
    identity = agent_identity(conn)
    (agent_pki / "trusted").mkdir(parents=True, exist_ok=True)
    (agent_pki / "trusted" / "plc.der").write_bytes(sim.certificate.read_bytes())
    (sim.trusted_dir / "agent.der").write_bytes(identity.cert.read_bytes())
    return identity.cert


@pytest.mark.parametrize(
    ("policy", "mode"),
    [
        ("Basic256Sha256", "SignAndEncrypt"),
        ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"),
        ("Aes256_Sha256_RsaPss", "Sign"),
    ],
)
async def test_secure_endpoint_with_generated_certificates(
    secure_server: ThreadedStation, driver: MakeDriver, tmp_path: Path, policy: str, mode: str
) -> None:
    sim = secure_server
    pumps = driver(sim.endpoint, **secure(tmp_path, policy, mode))
    trust_both_ways(sim, tmp_path / "agent", pumps.conn)
    await sim.set("Pump1.Level", 4321.0)
    await read_until(pumps, has("level", 4321.0))
    assert pumps.stats.sessions == 1 and pumps.stats.failed_attempts == 0


async def test_an_untrusted_agent_certificate_is_reported_with_its_path(
    secure_server: ThreadedStation,
    driver: MakeDriver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "drivers.opcua")
    sim = secure_server
    pumps = driver(sim.endpoint, **secure(tmp_path))
    # the technician trusts the PLC; the PLC's administrator has not trusted the agent yet
    (tmp_path / "agent/trusted").mkdir(parents=True)
    (tmp_path / "agent/trusted/plc.der").write_bytes(sim.certificate.read_bytes())
    seen = await read_until(pumps, has("level", quality=Quality.STALE))
    cert = tmp_path / "agent/own/cert.der"
    assert cert.exists()
    assert seen[0].reason == "disconnected (agent certificate rejected (BadCertificateUntrusted))"
    messages = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == [
        f"opcua pumps: generated the agent's certificate {cert} (application URI "
        f"{pumps.conn.application_uri or agent_identity(pumps.conn).application_uri}); "
        "give it to the server's administrator to trust",
        f"opcua pumps: cannot connect: the server rejected the agent's certificate "
        f"(BadCertificateUntrusted): give {cert} to the server's administrator to trust "
        f"(application URI {agent_identity(pumps.conn).application_uri}); the agent keeps "
        "retrying",
    ]
    # the administrator trusts it: the driver connects by itself, without a restart
    await sim.trust(cert)
    await read_until(pumps, has("level"), within=5)
    assert sum("rejected the agent's certificate" in r.message for r in caplog.records) == 1


async def test_an_untrusted_server_certificate_is_filed_for_the_technician(
    secure_server: ThreadedStation,
    driver: MakeDriver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "drivers.opcua")
    sim = secure_server
    pumps = driver(sim.endpoint, **secure(tmp_path))
    await sim.trust(agent_identity(pumps.conn).cert)
    seen = await read_until(pumps, has("level", quality=Quality.STALE))
    assert seen[0].reason == "disconnected (server certificate not trusted)"
    (rejected,) = (tmp_path / "agent/rejected").iterdir()
    assert rejected.read_bytes() == sim.certificate.read_bytes()
    (message,) = [r.message for r in caplog.records if "does not trust" in r.message]
    assert f"it was saved as {rejected}: if this is the right server, move it to " in message
    rejected.rename(tmp_path / "agent/trusted" / rejected.name)
    await read_until(pumps, has("level"), within=5)


async def test_a_wrong_password_names_the_user_and_never_the_password(
    secure_server: ThreadedStation,
    driver: MakeDriver,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = secure_server
    (tmp_path / "pass").write_text(secret("wrong-staple") + "\n")
    pumps = driver(sim.endpoint, username="ops", password_file=tmp_path / "pass")
    seen = await read_until(pumps, has("level", quality=Quality.STALE))
    assert seen[0].reason == "disconnected (BadUserAccessDenied)"
    (message,) = [r.message for r in caplog.records if "refused user" in r.message]
    assert message == (
        "opcua pumps: cannot connect: the server refused user 'ops' (BadUserAccessDenied): "
        f"check username and the password in {tmp_path / 'pass'}"
    )
    (tmp_path / "pass").write_text("s3cret\n")
    await read_until(pumps, has("level"), within=5)
    assert not any("s3cret" in r.getMessage() for r in caplog.records)
    assert not any("wrong-staple" in r.getMessage() for r in caplog.records)
