from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from drivers.modbus.config import ModbusPoint
from tests.pg import PgServer, pg_server
from tests.rig import POINTS

# the session-wide check that no secret reached a log or a central store: its hooks and
# fixture, taken into this conftest so that every run has them
from tests.secret_scan import (  # noqa: F401
    _secret_scan_base,
    pytest_sessionfinish,
    pytest_terminal_summary,
    scan_postgres,
)
from tests.support import Broker, ThreadedDevice, tmpfs


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[Broker]:
    """A real Mosquitto on a free loopback port, stopped after the test."""
    d = tmp_path / "broker"
    d.mkdir()
    broker = Broker(d).start()
    yield broker
    broker.stop()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MB filesystem (tmpfs) to fill up: what a full disk does to the outbox."""
    with tmpfs(tmp_path / "small-fs") as mnt:
        yield mnt


@pytest.fixture
def modbus_server() -> Iterator[ThreadedDevice]:
    """A simulated Modbus TCP device serving the rig's register map on 127.0.0.1."""
    device = ThreadedDevice([ModbusPoint.model_validate(p) for p in POINTS]).start()
    yield device
    device.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the session (started by the first test that needs
    it), in a temporary folder on a free loopback port; stopped at the end."""
    with pg_server() as server:
        yield server


@pytest.fixture
def pg_url(request: pytest.FixtureRequest, postgres_server: PgServer) -> Iterator[str]:
    """A fresh, empty database of its own for this test: its ``postgresql://`` URL."""
    url = postgres_server.create_database()
    yield url
    # searched before it goes: the PostgreSQL central store of the test (the session's
    # report names what it held)
    scan_postgres(url, f"the PostgreSQL store of {request.node.nodeid}")
    postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_address(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An address for ``open_store``, once per backend: an SQLite file in tmp_path, or a
    fresh PostgreSQL database (the server starts only when a test asks for one)."""
    if request.param == "sqlite":
        return str(tmp_path / "central.db")
    return str(request.getfixturevalue("pg_url"))


LOG_TAIL_LINES = 60


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """When a test fails, show the tail of every log its processes wrote (agent, central,
    broker, simulators), so that a failure seen once in CI can be understood from CI's output."""
    outcome = yield
    report = outcome.get_result()
    if report.passed or report.skipped:
        return
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if not isinstance(tmp, Path) or not tmp.exists():
        return
    for log in sorted(tmp.rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        report.sections.append((f"tail of {log.relative_to(tmp)}", "\n".join(lines)))
